"""Symbolic links inside the run's own checkpoints/ tree are never written or deleted through (issue 27,
class 2): a linked ``.tmp-step-N`` or ``step-N`` is unlinked with one warning, what it points to is left as
it was, and the checkpoint lands in a real directory."""

from __future__ import annotations

import json
import logging
import os

import torch

from trainer.checkpoint import CheckpointDir
from trainer.checkpoint.layout import MANIFEST, step_name


def _save(root, step: int, keep: int = 3) -> str:
    return CheckpointDir(str(root), keep=keep).save(
        step, 0, 1, {"w": torch.ones(2), "step": step}, {}, barrier=lambda: None
    )


def _outside(tmp_path):
    out = tmp_path / "outside"
    out.mkdir()
    (out / MANIFEST).write_text(json.dumps({"step": 7, "files": {}}))  # looks like a committed checkpoint
    (out / "precious.bin").write_bytes(b"keep me")
    return out


def _untouched(out) -> bool:
    return sorted(os.listdir(out)) == [MANIFEST, "precious.bin"] and (out / "precious.bin").read_bytes() == (
        b"keep me"
    )


def test_a_linked_tmp_dir_is_unlinked_not_written_through(tmp_path, caplog):
    # main: the manifest and state files went into the link's target, and the link became step-N
    root = tmp_path / "checkpoints"
    root.mkdir()
    out = _outside(tmp_path)
    os.symlink(out, root / (".tmp-" + step_name(5)))
    with caplog.at_level(logging.WARNING, logger="trainer"):
        final = _save(root, 5)
    assert _untouched(out)
    assert os.path.isdir(final) and not os.path.islink(final)
    assert os.path.isfile(os.path.join(final, MANIFEST))
    warned = [r.getMessage() for r in caplog.records if "symbolic link" in r.getMessage()]
    assert len(warned) == 1 and "removed the link, not what it points to" in warned[0]


def test_a_linked_step_dir_is_replaced_and_pruned_without_deleting_through_it(tmp_path, caplog):
    # main: saving that step again was a traceback ("Cannot call rmtree on a symbolic link"), and pruning a
    # linked step-N deleted the manifest inside the link's target
    root = tmp_path / "checkpoints"
    root.mkdir()
    out = _outside(tmp_path)
    os.symlink(out, root / step_name(5))
    with caplog.at_level(logging.WARNING, logger="trainer"):
        final = _save(root, 5)
    assert _untouched(out) and not os.path.islink(final)
    (tmp_path / "b").mkdir()
    other = _outside(tmp_path / "b")
    os.symlink(other, root / step_name(1))  # an older linked step, pruned by the next saves (keep=1)
    _save(root, 6, keep=1)
    _save(root, 7, keep=1)
    assert _untouched(other)
    assert sorted(n for n in os.listdir(root) if n.startswith("step-")) == [step_name(7)]

"""Checkpoint directories without a process group: verify, fall back, prune, `latest`, temp dirs, pickles.

Each test writes real checkpoints with ``CheckpointDir.save`` (one process, a no-op barrier), then damages
them the way a crash, a bad disk or an attacker would, and asserts what discovery and loading do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle

import pytest
import torch
import xxhash

from trainer import checkpoint as ckpt
from trainer.checkpoint import transaction

pytestmark = pytest.mark.timeout(60)


def _state(step: int) -> dict:
    return {
        "model": {"w": torch.full((4, 3), float(step)), "b": torch.arange(3.0) + step},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]},
        "scheduler": {"last_epoch": step},
        "scaler": None,
        "progress": {"step": step, "epoch": 0, "samples_in_epoch": 32 * step, "samples_total": 32 * step},
    }


def _save(root, step: int, keep: int = 3, checksum: str = "xxh3_128") -> str:
    cd = ckpt.CheckpointDir(str(root), keep=keep, checksum=checksum)
    return cd.save(step, 0, 1, _state(step), {"epoch": 0}, lambda: None)


@pytest.fixture
def three(tmp_path):
    """checkpoints/ with step 1, 2 and 3 committed (keep 3); `latest` names step 3."""
    root = tmp_path / "run" / "checkpoints"
    paths = [_save(root, s) for s in (1, 2, 3)]
    return root, paths


def _names(paths) -> list[str]:
    return [os.path.basename(p) for p in paths]


def test_a_committed_checkpoint_verifies_loads_and_records_every_file(three):
    root, (_, _, p3) = three
    assert ckpt.verify(p3) is None
    manifest = ckpt.read_manifest(p3)
    assert manifest["step"] == 3 and manifest["world_size"] == 1
    assert set(manifest["files"]) == {"state.pt", "rng-rank00000.pt"}
    assert manifest["checksum"] == "xxh3_128"  # the default; named so a reader knows how to check
    assert all(len(d) == 32 for d in manifest["files"].values())  # 128-bit hex
    state, rng = ckpt.load_state(p3)
    assert torch.equal(state["model"]["w"], torch.full((4, 3), 3.0)) and state["progress"]["step"] == 3
    assert rng is not None and "torch" in rng
    assert ckpt.resolve(str(root.parent)) == p3 == ckpt.resolve(str(root)) == ckpt.resolve(p3)


def _flip_byte(path: str, offset: int = -20) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset, os.SEEK_END)
        b = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([b[0] ^ 0xFF]))


def _truncate(path: str) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)


def _delete(path: str) -> None:
    os.remove(path)


@pytest.mark.parametrize(
    "damage, file, problem",
    [
        (_flip_byte, "state.pt", "checksum mismatch in state.pt"),
        (_truncate, "state.pt", "checksum mismatch in state.pt"),
        (_delete, "state.pt", "missing state.pt"),
        (_flip_byte, "rng-rank00000.pt", "checksum mismatch in rng-rank00000.pt"),
        (_delete, "rng-rank00000.pt", "missing rng-rank00000.pt"),
        (_truncate, "manifest.json", "manifest unreadable"),
    ],
)
def test_damaged_latest_is_detected_reported_and_the_previous_one_used(three, caplog, damage, file, problem):
    root, (_, p2, p3) = three
    damage(os.path.join(p3, file))
    assert problem in ckpt.verify(p3)
    with pytest.raises(ckpt.CheckpointError, match=problem.split(" in ")[0]):
        ckpt.load_state(p3)  # never unpickles a file that failed its checksum
    with caplog.at_level(logging.WARNING, logger="trainer"):
        found = ckpt.CheckpointDir(str(root)).find_resumable()
    assert found == p2
    assert any(p3 in r.getMessage() and problem.split(" in ")[0] in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]
    assert ckpt.resolve(str(root.parent)) == p2
    state, _ = ckpt.load_state(p2)
    assert state["progress"]["step"] == 2


def test_every_checkpoint_damaged_means_none_usable(three):
    root, paths = three
    for p in paths:
        _flip_byte(os.path.join(p, "state.pt"))
    with pytest.raises(ckpt.CheckpointError, match="no usable checkpoint.*step-00000003: checksum mismatch"):
        ckpt.CheckpointDir(str(root)).find_resumable()  # never "none at all": the caller must not restart
    with pytest.raises(ckpt.CheckpointError, match="no usable checkpoint"):
        ckpt.resolve(str(root.parent))


def test_keep_k_prunes_the_oldest_only_after_latest_moved(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4, 5):
        _save(root, step, keep=2)
        cd = ckpt.CheckpointDir(str(root), keep=2)
        assert cd.latest_pointer() == os.path.join(str(root), ckpt.step_name(step))
        assert _names(cd.committed()) == [ckpt.step_name(s) for s in (step, step - 1) if s >= 1]
    assert sorted(os.listdir(root)) == ["latest", "step-00000004", "step-00000005"]
    # keep=1: the only older checkpoint survives until the new one is committed and `latest` names it.
    seen = []

    def snapshot(phase):
        seen.append((phase, sorted(n for n in os.listdir(root) if n.startswith("step-"))))

    transaction.crash_hook = snapshot
    try:
        _save(root, 6, keep=1)
    finally:
        transaction.crash_hook = None
    assert dict(seen)["before_latest"] == ["step-00000004", "step-00000005", "step-00000006"]
    assert sorted(os.listdir(root)) == ["latest", "step-00000006"]


def test_latest_pointer_wins_over_a_newer_directory(three):
    """A crash between the rename and the `latest` update leaves a newer committed dir: `latest` decides."""
    root, (p1, p2, p3) = three
    ckpt.atomic_write_text(os.path.join(root, ckpt.LATEST), ckpt.step_name(2) + "\n")
    assert ckpt.verify(p3) is None
    assert ckpt.CheckpointDir(str(root)).find_resumable() == p2
    # A damaged `latest` target falls back to older checkpoints only, never forward past the pointer.
    _flip_byte(os.path.join(p2, "state.pt"))
    assert ckpt.CheckpointDir(str(root)).find_resumable() == p1


def test_latest_missing_or_dangling_falls_back_to_the_newest_committed(three):
    root, (_, p2, p3) = three
    os.remove(os.path.join(root, ckpt.LATEST))
    assert ckpt.CheckpointDir(str(root)).find_resumable() == p3
    ckpt.atomic_write_text(os.path.join(root, ckpt.LATEST), "step-00000009\n")  # pruned or never renamed
    assert ckpt.CheckpointDir(str(root)).find_resumable() == p3
    ckpt.atomic_write_text(os.path.join(root, ckpt.LATEST), ckpt.step_name(3) + "\n")
    _delete(os.path.join(p3, ckpt.MANIFEST))  # no manifest: not a committed checkpoint at all
    assert ckpt.CheckpointDir(str(root)).find_resumable() == p2


def test_latest_is_replaced_atomically(tmp_path):
    root = tmp_path / "checkpoints"
    _save(root, 1)
    _save(root, 2)
    assert (root / "latest").read_text() == "step-00000002\n"
    assert not [n for n in os.listdir(root) if n.endswith(".tmp")]  # the temp file was renamed, not left


def test_temp_dirs_are_ignored_and_cleaned_by_the_next_save(three):
    root, (_, _, p3) = three
    # An interrupted write, even one that got as far as a valid manifest, is never a candidate.
    tmp = os.path.join(root, ".tmp-" + ckpt.step_name(4))
    os.makedirs(tmp)
    with open(os.path.join(tmp, "state.pt"), "wb") as fh:
        fh.write(b"PK\x03\x04 partial")
    with open(os.path.join(tmp, ckpt.MANIFEST), "w") as fh:
        json.dump({"step": 4, "files": {}}, fh)
    cd = ckpt.CheckpointDir(str(root))
    assert p3 == cd.find_resumable() and tmp not in cd.committed()
    assert ckpt.resolve(str(root)) == p3
    _save(root, 5)
    assert not os.path.exists(tmp)


class _Plant:
    """Unpickling this calls open(marker, 'w'): the marker file existing means the payload ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _rewrite_manifest_checksum(ckpt_dir: str, name: str) -> None:
    path = os.path.join(ckpt_dir, ckpt.MANIFEST)
    with open(path) as fh:
        manifest = json.load(fh)
    manifest["files"][name] = ckpt.file_checksum(os.path.join(ckpt_dir, name), manifest["checksum"])
    with open(path, "w") as fh:
        json.dump(manifest, fh)


@pytest.mark.parametrize("file", ["state.pt", "rng-rank00000.pt"])
@pytest.mark.parametrize("fmt", ["torch_zip", "raw_pickle"])
def test_malicious_pickle_with_a_matching_checksum_is_refused_without_running(three, tmp_path, file, fmt):
    root, (_, _, p3) = three
    marker = tmp_path / f"pwned-{fmt}-{file}"
    payload = {"model": _Plant(str(marker)), "progress": {"step": 3}}
    target = os.path.join(p3, file)
    if fmt == "torch_zip":
        torch.save(payload, target)
    else:
        with open(target, "wb") as fh:
            pickle.dump(payload, fh, protocol=2)  # what torch's legacy (non-zip) format uses
    _rewrite_manifest_checksum(p3, file)  # the attacker controls the whole directory
    # checksums alone cannot catch this: verify's weights_only probe does, as one line, and falls back
    assert (
        ckpt.verify(p3)
        == f"{file} refused: it holds objects other than tensors and plain data (weights_only load)"
    )
    assert ckpt.CheckpointDir(str(root)).find_resumable() == os.path.join(str(root), ckpt.step_name(2))
    with pytest.raises(ckpt.CheckpointError, match="refused"):
        ckpt.load_state(p3, verify_first=False)
    assert not marker.exists()
    # Control: the payload is live; an unrestricted load runs it.
    with open(target, "rb") as fh:
        loaded = torch.load(fh, weights_only=False) if fmt == "torch_zip" else pickle.load(fh)
    loaded["model"].close()
    assert marker.exists()


_HASHES = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}


@pytest.mark.parametrize("checksum", ["xxh3_128", "sha256"])
def test_digest_taken_while_writing_is_the_files_and_a_later_tamper_is_still_refused(tmp_path, checksum):
    """The manifest's digest comes from the bytes as they were written (no read-back, issue 28): it is the
    digest of the file on disk by the algorithm the manifest names, and a file changed after the write (same
    size, one byte) is refused by verify, by load_state and by find_resumable, which falls back to the
    previous checkpoint."""
    root = tmp_path / "checkpoints"
    p1, p2 = _save(root, 1, checksum=checksum), _save(root, 2, checksum=checksum)
    manifest = ckpt.read_manifest(p2)
    assert manifest["checksum"] == checksum
    for name, digest in manifest["files"].items():
        assert digest == _HASHES[checksum](open(os.path.join(p2, name), "rb").read()).hexdigest(), name
    _flip_byte(os.path.join(p2, "state.pt"), offset=-200)
    assert ckpt.verify(p2) == "checksum mismatch in state.pt"
    with pytest.raises(ckpt.CheckpointError, match="checksum mismatch in state.pt"):
        ckpt.load_state(p2)
    assert ckpt.CheckpointDir(str(root)).find_resumable(preload=True) == p1


def test_a_tamper_between_finding_and_loading_is_caught(tmp_path):
    """find_resumable(preload=True) keeps the state it verified for load_state; a write to the file in
    between (its ctime moves) makes load_state read and check it again, and refuse it."""
    root = tmp_path / "checkpoints"
    _save(root, 1)
    p2 = _save(root, 2)
    assert ckpt.CheckpointDir(str(root)).find_resumable(preload=True) == p2
    state, _ = ckpt.load_state(p2)  # the preloaded, verified state
    assert state["progress"]["step"] == 2
    assert ckpt.CheckpointDir(str(root)).find_resumable(preload=True) == p2
    _flip_byte(os.path.join(p2, "state.pt"), offset=-200)
    with pytest.raises(ckpt.CheckpointError, match="checksum mismatch in state.pt"):
        ckpt.load_state(p2)


def _drop_checksum_key(ckpt_dir: str) -> None:
    """A manifest as written before xxh3: sha256 digests and no ``checksum`` key."""
    path = os.path.join(ckpt_dir, ckpt.MANIFEST)
    with open(path) as fh:
        manifest = json.load(fh)
    assert manifest.pop("checksum") == "sha256"
    with open(path, "w") as fh:
        json.dump(manifest, fh)


def test_a_sha256_manifest_from_before_xxh3_still_verifies_loads_and_catches_a_tamper(tmp_path):
    root = tmp_path / "checkpoints"
    p1, p2 = _save(root, 1, checksum="sha256"), _save(root, 2, checksum="sha256")
    for p in (p1, p2):
        _drop_checksum_key(p)
    assert ckpt.verify(p2) is None
    assert ckpt.CheckpointDir(str(root)).find_resumable(preload=True) == p2
    state, _ = ckpt.load_state(p2)
    assert torch.equal(state["model"]["w"], torch.full((4, 3), 2.0))
    _flip_byte(os.path.join(p2, "state.pt"), offset=-200)
    assert ckpt.verify(p2) == "checksum mismatch in state.pt"
    assert ckpt.CheckpointDir(str(root)).find_resumable(preload=True) == p1
    # the next save into the same directory uses the new default; both kinds stand side by side
    p3 = _save(root, 3)
    assert ckpt.read_manifest(p3)["checksum"] == "xxh3_128" and ckpt.verify(p3) is None


def test_a_manifest_naming_an_unknown_checksum_is_unusable(tmp_path):
    root = tmp_path / "checkpoints"
    p1, p2 = _save(root, 1), _save(root, 2)
    path = os.path.join(p2, ckpt.MANIFEST)
    with open(path) as fh:
        manifest = json.load(fh)
    with open(path, "w") as fh:
        json.dump({**manifest, "checksum": "crc32"}, fh)
    assert ckpt.verify(p2) == "manifest names an unknown checksum 'crc32'"
    assert ckpt.CheckpointDir(str(root)).find_resumable() == p1

"""runtime/atomic.py: the one atomic write. A failed write leaves the old file and no temp file behind."""

from __future__ import annotations

import json
import os

import pytest

from trainer.runtime import atomic


@pytest.fixture
def out(tmp_path):
    """A directory of its own (tmp_path holds the session's other temp files)."""
    d = tmp_path / "out"
    d.mkdir()
    return d


def test_write_text_replaces_the_file_and_leaves_no_temp(out):
    p = out / "summary.json"
    p.write_text("old")
    atomic.write_text(str(p), json.dumps({"steps": 3}))
    assert json.loads(p.read_text()) == {"steps": 3}
    assert os.listdir(out) == ["summary.json"]


@pytest.mark.parametrize("how", ["open", "path"])
def test_a_writer_that_fails_leaves_the_old_file_and_no_temp(out, how):
    p = out / "model.safetensors"
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk said no"):
        if how == "open":
            with atomic.atomic_open(str(p), "wb") as fh:
                fh.write(b"half")
                raise RuntimeError("disk said no")
        else:
            with atomic.atomic_path(str(p), suffix=".1.tmp.npz") as tmp:
                open(tmp, "wb").write(b"half")
                raise RuntimeError("disk said no")
    assert p.read_bytes() == b"old"
    assert os.listdir(out) == ["model.safetensors"]


def test_atomic_path_commits_what_the_writer_wrote_under_the_temp_name(out):
    p = out / "cache.npz"
    with atomic.atomic_path(str(p), suffix=".7.tmp.npz") as tmp:
        assert tmp == str(p) + ".7.tmp.npz"
        open(tmp, "wb").write(b"tokens")
    assert p.read_bytes() == b"tokens" and os.listdir(out) == ["cache.npz"]


def test_replace_dir_swaps_a_whole_directory(out):
    final, tmp = out / "hf", out / "hf.tmp"
    final.mkdir()
    (final / "old.json").write_text("{}")
    tmp.mkdir()
    (tmp / "config.json").write_text('{"a": 1}')
    atomic.replace_dir(str(tmp), str(final))
    assert os.listdir(final) == ["config.json"] and not tmp.exists()

"""The storage layer under CheckpointDir, without a server: fsspec's in-memory store stands in for S3 (no
rename, whole-object writes), so the in-place transaction, pruning and verification run in milliseconds.
The real S3 server tests are tests/integration/test_s3_checkpoint.py."""

from __future__ import annotations

import json

import pytest

from trainer import checkpoint as ckpt
from trainer import config as C
from trainer.checkpoint import stores


def _save(d: ckpt.CheckpointDir, step: int) -> str:
    return d.save(step, 0, 1, {"progress": {"step": step}}, {"epoch": 0}, barrier=lambda: None)


@pytest.fixture
def mem(request):
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"memory://{request.node.name}"
    yield root, fs
    fs.rm(root.split("://")[1], recursive=True)


def test_in_place_transaction_on_a_store_without_rename(mem):
    root, fs = mem
    d = ckpt.CheckpointDir(root, keep=2)
    assert d.tmp_dir(4) == f"{root}/step-00000004"  # written in place: nothing to rename
    for step in (4, 8, 12):
        assert _save(d, step) == f"{root}/{ckpt.step_name(step)}"
    assert d.committed() == [f"{root}/step-00000012", f"{root}/step-00000008"]  # keep=2
    assert d.latest_pointer() == f"{root}/step-00000012"
    manifest = json.loads(fs.cat_file(f"/{root.split('://')[1]}/step-00000012/manifest.json"))
    assert set(manifest["files"]) == {"state.pt", "rng-rank00000.pt"}
    assert ckpt.verify(f"{root}/step-00000012") is None
    state, rng = ckpt.load_state(f"{root}/step-00000012")
    assert state["progress"]["step"] == 12 and rng is not None


def test_a_step_without_manifest_does_not_exist_and_the_next_commit_removes_it(mem):
    root, fs = mem
    d = ckpt.CheckpointDir(root, keep=3)
    _save(d, 4)
    d.begin(8, 0, lambda: None)  # an interrupted write: files under step-8/, no manifest
    d.write(8, 0, {"progress": {}}, ckpt.rng_state())
    assert d.committed() == [f"{root}/step-00000004"] and ckpt.resolve(root) == f"{root}/step-00000004"
    _save(d, 12)
    names = d.store.listdir(root)
    assert "step-00000008" not in names and {"step-00000004", "step-00000012", "latest"} <= set(names)


def test_a_corrupted_object_is_caught_by_verify_and_the_previous_one_used(mem):
    root, fs = mem
    d = ckpt.CheckpointDir(root, keep=3)
    _save(d, 4)
    _save(d, 8)
    fs.pipe_file(f"/{root.split('://')[1]}/step-00000008/state.pt", b"garbage")
    assert ckpt.verify(f"{root}/step-00000008") == "checksum mismatch in state.pt"  # read back, not trusted
    assert d.find_resumable() == f"{root}/step-00000004"


def test_transient_errors_are_retried_then_raised(monkeypatch):
    import fsspec

    monkeypatch.setattr(stores, "BACKOFF_S", 0.0)
    store = stores.for_path("memory://retry")
    calls = []

    def hook(op, path):
        calls.append(op)
        if len(calls) <= 2:
            raise ConnectionResetError("reset")

    monkeypatch.setattr(stores, "fault_hook", hook)
    store.write_bytes("memory://retry/x", b"data")
    assert calls == ["write"] * 3 and fsspec.filesystem("memory").cat_file("/retry/x") == b"data"
    monkeypatch.setattr(stores, "fault_hook", lambda op, path: (_ for _ in ()).throw(TimeoutError("slow")))
    with pytest.raises(stores.EndpointError) as failed:  # every retry failed: exit 74, one line
        store.write_bytes("memory://retry/y", b"data")
    assert isinstance(failed.value.__cause__, TimeoutError) and "5 attempt(s)" in str(failed.value)
    denied = lambda op, path: (_ for _ in ()).throw(PermissionError("denied"))  # noqa: E731
    monkeypatch.setattr(stores, "fault_hook", denied)
    calls.clear()
    with pytest.raises(PermissionError):
        store.write_bytes("memory://retry/z", b"data")  # a refusal is not retried


@pytest.mark.parametrize(
    "url, message",
    [
        ("foo://b/x", "unknown storage protocol 'foo'"),
        ("s3:///x", "no bucket"),
        ("gs://b/x", "gs:// needs the gcsfs package"),
    ],
)
def test_checkpoint_dir_urls_are_validated_offline(url, message):
    with pytest.raises(C.ConfigError, match=message) as e:
        C.load(None, [f"checkpoint.dir={url}"])
    assert str(e.value).startswith(f"checkpoint.dir={url!r}: ")


def test_paths_and_urls():
    assert stores.join("s3://b/p/", "step-1", "x") == "s3://b/p/step-1/x"
    assert stores.join("/tmp/a", "b") == "/tmp/a/b"
    assert stores.basename("s3://b/p/step-1/") == "step-1" and stores.dirname("s3://b/p/x") == "s3://b/p"
    assert not stores.is_url("file:///tmp/x") and stores.is_url("s3://b")
    assert ckpt.checkpoint_root(None, "runs/a") == "runs/a/checkpoints"
    assert ckpt.checkpoint_root("s3://b/p", "runs/a") == "s3://b/p"

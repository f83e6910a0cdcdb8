"""Datasets: shapes and dtypes, deterministic disjoint splits, augmentation seeding, every file format and
every error path (a ConfigError whose message names the key)."""

from __future__ import annotations

import hashlib
import pickle
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer import config
from trainer.config import ConfigError
from trainer.data import Stream, build_datasets, split_indices
from trainer.data.files import read_corpus, stdlib_corpus_files

torch.set_num_threads(1)


def cfg_of(*overrides: str) -> config.Config:
    return config.load(None, list(overrides))


def build(*overrides: str):
    return build_datasets(cfg_of(*overrides))


def check_batch_matches_items(ds, idx=(0, 3, 1)):
    """get_batch stacks exactly what __getitem__ returns, dtypes included."""
    xb, yb = ds.get_batch(list(idx))
    for row, i in enumerate(idx):
        x, y = ds[i]
        assert x.dtype == xb.dtype and y.dtype == yb.dtype
        assert torch.equal(xb[row], x) and torch.equal(yb[row], y)
    xt, yt = ds.get_batch(torch.tensor(idx))  # the loop passes LongTensor slices too
    assert torch.equal(xt, xb) and torch.equal(yt, yb)


# ----------------------------------------------------------------------------- splits and synthetic


def test_split_indices_disjoint_deterministic_and_complete():
    tr, ev = split_indices(100, 0.2, 7)
    tr2, ev2 = split_indices(100, 0.2, 7)
    assert np.array_equal(tr, tr2) and np.array_equal(ev, ev2)
    assert len(ev) == 20 and not set(tr) & set(ev) and set(tr) | set(ev) == set(range(100))
    assert not np.array_equal(ev, split_indices(100, 0.2, 8)[1])
    assert len(split_indices(5, 0.01, 0)[1]) == 1  # a positive fraction always holds something out
    assert len(split_indices(5, 0.0, 0)[1]) == 0


@pytest.mark.parametrize(
    "name,task", [("synthetic_regression", "regression"), ("synthetic_classification", "classification")]
)
def test_synthetic_shapes_and_split(name, task):
    tr, ev, info = build(
        f"data.name={name}", "data.num_samples=200", "data.num_features=5", "data.num_classes=3"
    )
    assert (len(tr), len(ev)) == (180, 20) and info.task == task and info.input_shape == (5,)
    x, y = tr[0]
    assert x.dtype == torch.float32 and x.shape == (5,)
    if task == "regression":
        assert y.dtype == torch.float32 and y.shape == (1,) and info.num_outputs == 1
    else:
        assert y.dtype == torch.int64 and y.shape == () and info.num_classes == 3
        assert set(tr.y.tolist()) <= {0, 1, 2}
    check_batch_matches_items(tr)
    rows_tr = {tuple(r) for r in tr.x.tolist()}
    assert not rows_tr & {tuple(r) for r in ev.x.tolist()}  # disjoint
    tr2, ev2, info2 = build(
        f"data.name={name}", "data.num_samples=200", "data.num_features=5", "data.num_classes=3", "seed=5"
    )
    assert torch.equal(tr.x, tr2.x) and torch.equal(ev.y, ev2.y)  # data does not depend on the run seed
    assert info.fingerprint == info2.fingerprint and len(info.fingerprint) == 16
    tr3, _, info3 = build(
        f"data.name={name}", "data.num_samples=200", "data.num_features=5", "data.split_seed=9"
    )
    assert not torch.equal(tr.x, tr3.x) and info3.fingerprint != info.fingerprint


def test_synthetic_regression_is_fit_by_a_linear_model():
    tr, ev, _ = build("data.name=synthetic_regression", "data.num_samples=1000")
    ones = torch.ones(len(tr), 1)
    w = torch.linalg.lstsq(torch.cat([tr.x, ones], 1), tr.y).solution
    mse = ((torch.cat([ev.x, torch.ones(len(ev), 1)], 1) @ w - ev.y) ** 2).mean()
    assert 0.005 < float(mse) < 0.02


# ----------------------------------------------------------------------------- digits and diabetes


@pytest.fixture(scope="module")
def digits():
    return build("data.name=digits")


def test_digits_shapes_and_normalisation(digits):
    tr, ev, info = digits
    assert (len(tr), len(ev)) == (1617, 180)
    assert info.task == "classification" and info.num_classes == 10 and info.input_shape == (1, 28, 28)
    x, y = tr[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    allx = torch.cat([tr.x, ev.x])
    assert abs(float(allx.mean())) < 1e-3 and abs(float(allx.std()) - 1) < 1e-3
    assert set(tr.y.tolist()) == set(range(10))
    check_batch_matches_items(tr)
    assert "1617 train / 180 eval" in info.description


def test_digits_classes_filter_keeps_labels_and_split(digits):
    tr_all, ev_all, _ = digits
    tr, ev, info = build("data.name=digits", "data.classes=[3,1]")
    assert info.num_classes == 10 and set(tr.y.tolist()) == {1, 3} and set(ev.y.tolist()) <= {1, 3}
    keep = (ev_all.y == 1) | (ev_all.y == 3)  # the split is made before filtering: same eval images
    assert torch.equal(ev.x, ev_all.x[keep]) and torch.equal(ev.y, ev_all.y[keep])
    with pytest.raises(ConfigError, match="data.classes"):
        build("data.name=digits", "data.classes=[1,12]")


def test_digits_augmentation_is_seeded_per_sample_and_epoch(digits):
    tr_plain = digits[0]
    tr, ev, info = build("data.name=digits", "data.augment=true", "seed=3")
    idx = [0, 5, 9, 100]
    a, y = tr.get_batch(idx)
    assert torch.equal(y, tr_plain.y[idx])
    assert torch.equal(a, tr.get_batch(idx)[0])  # deterministic
    assert torch.equal(tr.get_batch([9])[0][0], a[2])  # independent of batch composition (any rank/worker)
    assert torch.equal(pickle.loads(pickle.dumps(tr)).get_batch(idx)[0], a)  # same in a spawned worker
    check_batch_matches_items(tr, idx)
    bg = float(tr_plain.x.min())
    for k, i in enumerate(idx):  # each sample is its plain image translated by an integer shift in [-2, 2]
        padded = torch.nn.functional.pad(tr_plain.x[i], (2, 2, 2, 2), value=bg)
        assert any(
            torch.allclose(a[k], padded[:, 2 - dy : 30 - dy, 2 - dx : 30 - dx])
            for dy in range(-2, 3)
            for dx in range(-2, 3)
        )
    tr.set_epoch(1)
    assert not torch.equal(tr.get_batch(idx)[0], a)  # new shifts every epoch
    tr.set_epoch(0)
    assert torch.equal(tr.get_batch(idx)[0], a)
    other, _, _ = build("data.name=digits", "data.augment=true", "seed=4")
    assert not torch.equal(other.get_batch(idx)[0], a)
    assert torch.equal(ev.x, digits[1].x)  # evaluation is never augmented


def test_diabetes_standardised_regression():
    tr, ev, info = build("data.name=diabetes")
    assert len(tr) + len(ev) == 442 and info.task == "regression" and info.num_outputs == 1
    assert info.input_shape == (10,)
    assert abs(float(tr.y.mean())) < 1e-4 and abs(float(tr.y.std(unbiased=False)) - 1) < 1e-4
    assert abs(float(tr.x.mean(0).abs().max())) < 1e-4
    assert info.extra["y_std"] > 1 and "mean" in info.description
    check_batch_matches_items(tr)


# ----------------------------------------------------------------------------- text and tokens


def test_text_default_corpus_is_stdlib_top_level_py_with_stable_fingerprint():
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    files = stdlib_corpus_files()
    assert files and all(f.suffix == ".py" and f.parent.resolve() == stdlib for f in files)
    assert not any("site-packages" in f.parts for f in files)
    assert [f.name for f in files] == sorted(f.name for f in files)
    over = ("data.name=text", "data.max_bytes=30000", "model.block_size=16")
    tr, ev, info = build(*over)
    raw, used = read_corpus(files, 30000)
    assert len(raw) == 30000 and [Path(f) for f in tr.files] == used
    assert info.task == "lm" and info.vocab_size == 256 and info.seq_len == 16 and info.input_shape == (16,)
    assert info.fingerprint == build(*over)[2].fingerprint == hashlib.sha256(raw).hexdigest()[:16]
    x, y = tr.get_batch([0, 7])
    assert x.dtype == torch.int64 and x.shape == (2, 16) and torch.equal(x[:, 1:], y[:, :-1])
    assert x[1].tolist() == list(raw[7 * 16 : 8 * 16]) and y[1].tolist() == list(raw[7 * 16 + 1 : 8 * 16 + 1])
    # eval is the contiguous tail: the last train window ends before the first eval token
    cut = 30000 - 3000
    assert tr.stop == ev.start == cut and (len(tr) - 1) * 16 + 17 <= cut
    assert ev[0][0].tolist() == list(raw[cut : cut + 16])
    check_batch_matches_items(ev)


def test_text_from_file_and_directory(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".git").mkdir()
    (tmp_path / "b.txt").write_bytes(b"B" * 300)
    (tmp_path / "sub" / "a.md").write_bytes(b"A" * 300)
    (tmp_path / ".git" / "HEAD").write_bytes(b"X" * 300)
    tr, ev, info = build(
        "data.name=text", f"data.path={tmp_path}", "model.block_size=8", "data.eval_fraction=0.5"
    )
    assert [Path(f).name for f in tr.files] == ["b.txt", "a.md"]  # sorted by relative path: b.txt < sub/a.md
    assert set(tr[0][0].tolist()) == {ord("B")} and set(ev[len(ev) - 1][1].tolist()) == {ord("A")}
    tr, _, _ = build("data.name=text", f"data.path={tmp_path / 'b.txt'}", "model.block_size=8")
    assert len(tr) == (270 - 1) // 8
    with pytest.raises(ConfigError, match="data.eval_fraction"):
        build("data.name=text", f"data.path={tmp_path / 'b.txt'}", "model.block_size=64")


@pytest.mark.parametrize("dtype,vocab", [("uint16", 1000), ("uint32", 70000)])
def test_token_bin_is_memory_mapped_with_correct_windows(tmp_path, dtype, vocab):
    toks = (np.arange(1000, dtype=np.int64) * 37 % vocab).astype(dtype)
    toks[-1] = vocab - 1
    path = tmp_path / "data.bin"
    toks.tofile(path)
    tr, ev, info = build(
        "data.name=tokens",
        f"data.path={path}",
        f"data.token_dtype={dtype}",
        f"model.vocab_size={vocab}",
        "model.block_size=10",
    )
    assert info.task == "lm" and info.vocab_size == vocab and info.seq_len == 10
    assert isinstance(tr.tokens, np.memmap)
    assert len(pickle.dumps(tr)) < 1000  # a worker gets the path, not a copy of the file
    x, y = tr.get_batch([3])
    assert (
        x.dtype == torch.int64
        and x[0].tolist() == toks[30:40].tolist()
        and y[0].tolist() == toks[31:41].tolist()
    )
    assert ev.start == 900 and len(ev) == (100 - 1) // 10 and len(tr) == (900 - 1) // 10
    check_batch_matches_items(ev)
    tr2 = pickle.loads(pickle.dumps(tr))
    assert torch.equal(tr2.get_batch([3])[0], x)


def test_token_directory_layouts(tmp_path):
    np.arange(200, dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.arange(50, dtype=np.uint16).tofile(tmp_path / "val.bin")
    tr, ev, info = build("data.name=tokens", f"data.path={tmp_path}", "model.block_size=8")
    assert (len(tr), len(ev)) == ((200 - 1) // 8, (50 - 1) // 8) and ev[0][0].tolist() == list(range(8))
    single = tmp_path / "single"
    single.mkdir()
    np.arange(200, dtype=np.uint16).tofile(single / "corpus.bin")
    tr, ev, _ = build("data.name=tokens", f"data.path={single}", "model.block_size=8")
    assert tr.stop == 180 and ev.start == 180
    np.arange(100, dtype=np.uint16).tofile(single / "other.bin")
    tr, ev, _ = build("data.name=tokens", f"data.path={single}", "model.block_size=8")  # shards: a stream
    assert isinstance(tr, Stream) and tr.length == 199 // 8 + 99 // 8 and len(ev) == 0


def test_token_errors(tmp_path):
    bad = tmp_path / "bad.bin"
    np.array([1, 2, 300, 4] * 20, dtype=np.uint16).tofile(bad)
    with pytest.raises(ConfigError, match=r"data.path=.*token id 300 at position 2 >= model.vocab_size=256"):
        build("data.name=tokens", f"data.path={bad}", "model.block_size=4")
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\1\2\3")
    with pytest.raises(ConfigError, match="data.path=.*multiple of 2"):
        build("data.name=tokens", f"data.path={odd}")
    short = tmp_path / "short.bin"
    np.arange(10, dtype=np.uint16).tofile(short)
    with pytest.raises(ConfigError, match="model.block_size"):
        build("data.name=tokens", f"data.path={short}", "model.block_size=32")


# ----------------------------------------------------------------------------- tensors and csv


def test_tensors_npz_pt_npy(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 3, 2)).astype(np.float64)
    np.savez(tmp_path / "c.npz", X=x, Y=np.arange(50) % 4)
    tr, ev, info = build("data.name=tensors", f"data.path={tmp_path / 'c.npz'}")
    assert info.task == "classification" and info.num_classes == 4 and info.input_shape == (3, 2)
    assert (len(tr), len(ev)) == (45, 5) and tr[0][0].dtype == torch.float32 and tr[0][1].dtype == torch.int64
    check_batch_matches_items(tr)

    torch.save({"x": torch.randn(40, 6), "y": torch.randn(40, 2)}, tmp_path / "r.pt")
    tr, ev, info = build("data.name=tensors", f"data.path={tmp_path / 'r.pt'}")
    assert info.task == "regression" and info.num_outputs == 2 and tr[0][1].shape == (2,)

    np.save(tmp_path / "t.npy", rng.standard_normal((30, 5)))
    tr, _, info = build("data.name=tensors", f"data.path={tmp_path / 't.npy'}")
    assert info.task == "regression" and info.input_shape == (4,) and tr[0][1].shape == (1,)


def test_tensors_errors(tmp_path):
    np.savez(tmp_path / "k.npz", a=np.zeros(3), b=np.zeros(3))
    with pytest.raises(ConfigError, match="data.path=.*arrays named x and y.*found a, b"):
        build("data.name=tensors", f"data.path={tmp_path / 'k.npz'}")
    np.save(tmp_path / "3d.npy", np.zeros((2, 3, 4)))
    with pytest.raises(ConfigError, match="data.path=.*2-D"):
        build("data.name=tensors", f"data.path={tmp_path / '3d.npy'}")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ConfigError, match="data.path=.*unsupported suffix"):
        build("data.name=tensors", f"data.path={tmp_path / 'x.json'}")
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="data.path=.*cannot read"):
        build("data.name=tensors", f"data.path={tmp_path / 'junk.pt'}")
    np.savez(tmp_path / "n.npz", x=np.zeros((4, 2)), y=np.array([0, -1, 1, 0]))
    with pytest.raises(ConfigError, match="data.path=.*labels must be >= 0"):
        build("data.name=tensors", f"data.path={tmp_path / 'n.npz'}")


def write_csv(path: Path, n: int = 40) -> Path:
    lines = ["a,b,price,label"]
    for i in range(n):
        lines.append(f"{i * 0.5},{-i},{i * 1.25 + 0.1},{i % 3}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_target_by_name_index_and_default(tmp_path):
    p = write_csv(tmp_path / "d.csv")
    tr, ev, info = build("data.name=csv", f"data.path={p}")  # default: last column (label) -> classification
    assert info.task == "classification" and info.num_classes == 3 and info.input_shape == (3,)
    assert (len(tr), len(ev)) == (36, 4) and tr[0][1].dtype == torch.int64
    tr, _, info = build("data.name=csv", f"data.path={p}", "data.target=price")
    assert (
        info.task == "regression"
        and info.num_outputs == 1
        and info.extra["feature_names"] == ["a", "b", "label"]
    )
    assert torch.allclose(tr.y[:, 0], tr.x[:, 0] * 2.5 + 0.1)  # price = 2.5 a + 0.1, columns line up
    _, _, by_index = build("data.name=csv", f"data.path={p}", "data.target=2")
    assert by_index.task == "regression" and by_index.fingerprint == info.fingerprint
    _, _, ints = build("data.name=csv", f"data.path={p}", "data.target=b")  # negative integers: not labels
    assert ints.task == "regression"
    years = tmp_path / "years.csv"
    years.write_text("x,year\n" + "".join(f"{i},{1990 + i % 30}\n" for i in range(40)))
    assert build("data.name=csv", f"data.path={years}")[2].task == "regression"


def test_csv_errors(tmp_path):
    p = write_csv(tmp_path / "d.csv")
    with pytest.raises(
        ConfigError, match=r"data.target='cost': column 'cost' not found .*\(columns: a, b, price, label\)"
    ):
        build("data.name=csv", f"data.path={p}", "data.target=cost")
    with pytest.raises(ConfigError, match="data.target='9': index out of range"):
        build("data.name=csv", f"data.path={p}", "data.target=9")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n3,oops\n")
    with pytest.raises(ConfigError, match=r"data.path=.* line 3 column 'b': 'oops' is not a number"):
        build("data.name=csv", f"data.path={bad}")


# ----------------------------------------------------------------------------- user datasets and errors

USER_MODULE = """
import torch
from torch.utils.data import Dataset

class Squares(Dataset):
    def __init__(self, n=20, scale=1.0):
        self.n, self.scale, self.epoch = n, scale, 0
    def __len__(self):
        return self.n
    def __getitem__(self, i):
        return [float(i) * self.scale, 1.0], i % 5
    def set_epoch(self, epoch):
        self.epoch = epoch

class Reg(Squares):
    def __getitem__(self, i):
        return torch.tensor([float(i)]), float(i) ** 2

class Seq(Squares):
    vocab_size = 50
    def __getitem__(self, i):
        t = torch.arange(i, i + 9) % 50
        return t[:-1], t[1:]

def pair(n=10):
    return Squares(n), Squares(4)

def broken(**kw):
    raise RuntimeError("no data here")
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "tdata_user.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "tdata_user", raising=False)
    return "tdata_user"


def test_user_dataset_by_import_path(user_module):
    tr, ev, info = build(f"data.name={user_module}:Squares", "data.kwargs={n: 30, scale: 2.0}")
    assert (len(tr), len(ev)) == (27, 3) and info.task == "classification" and info.num_classes == 5
    x, y = tr[1]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (2,)
    assert float(x[0]) == 2.0 * int(tr.indices[1])  # kwargs reached the dataset; indices map into it
    check_batch_matches_items(tr)
    assert len(info.fingerprint) == 16 and "user dataset" in info.description
    tr.set_epoch(4)
    assert tr.base.epoch == 4
    tr2, ev2, _ = build(f"data.name={user_module}:Squares", "data.kwargs={n: 30, scale: 2.0}")
    assert np.array_equal(tr.indices, tr2.indices) and not set(tr.indices) & set(ev2.indices)


def test_user_dataset_pair_regression_and_lm(user_module):
    tr, ev, info = build(f"data.name={user_module}:pair")
    assert (len(tr), len(ev)) == (10, 4) and info.task == "classification"
    tr, _, info = build(f"data.name={user_module}:Reg")
    assert info.task == "regression" and info.num_outputs == 1 and tr[2][1].tolist() == [4.0]
    assert tr.get_batch([0, 1])[1].shape == (2, 1)
    tr, _, info = build(f"data.name={user_module}:Seq")
    assert info.task == "lm" and info.vocab_size == 50 and info.seq_len == 8 and tr[0][0].dtype == torch.int64


def test_user_dataset_errors(user_module):
    with pytest.raises(ConfigError, match="data.name='no_such_mod_xyz:D': cannot import module"):
        build("data.name=no_such_mod_xyz:D")
    with pytest.raises(ConfigError, match=f"data.name='{user_module}:Nope'.*no attribute 'Nope'"):
        build(f"data.name={user_module}:Nope")
    with pytest.raises(ConfigError, match="data.name=.*data.kwargs=.*RuntimeError: no data here"):
        build(f"data.name={user_module}:broken")
    with pytest.raises(ConfigError, match="data.name=.*data.kwargs=.*TypeError"):
        build(f"data.name={user_module}:Squares", "data.kwargs={bogus: 1}")


def test_missing_files_are_config_errors(tmp_path):
    missing = str(tmp_path / "nope.csv")
    with pytest.raises(ConfigError, match="data.path=.*nope.csv"):  # caught when the config is loaded
        build("data.name=csv", f"data.path={missing}")
    for name in ("csv", "tensors", "tokens", "text"):  # and again by the builders (configs built in code)
        c = cfg_of("data.name=synthetic_regression")
        c.data.name, c.data.path = name, missing
        with pytest.raises(ConfigError, match="data.path=.*nope.csv"):
            build_datasets(c)

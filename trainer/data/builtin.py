"""Datasets that need no files: two synthetic generators and scikit-learn's bundled digits and diabetes.

Everything random here is drawn from ``data.split_seed`` (never ``seed``), so the data itself is the same
for every run seed and runs stay comparable; only augmentation uses ``seed``.
"""

from __future__ import annotations

import importlib.util
import os
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F

from ..config import Config, ConfigError
from .base import ArrayDataset, DataInfo, fingerprint, sample_hash, split_indices

IMAGE_SIZE = 28  # digits are upsampled to the MNIST size so the classic CNN applies unchanged
MAX_SHIFT = 2  # digits augmentation: integer shifts in [-2, 2] pixels on each axis


def _split_arrays(cfg: Config, x: np.ndarray, y: np.ndarray):
    tr, ev = split_indices(len(x), cfg.data.eval_fraction, cfg.data.split_seed)
    return (torch.from_numpy(x[tr]), torch.from_numpy(y[tr])), (
        torch.from_numpy(x[ev]),
        torch.from_numpy(y[ev]),
    )


def synthetic_regression(cfg: Config):
    """y = X @ w_true + b + 0.1 * noise: a linear model reaches MSE ~0.01 (the noise variance)."""
    d = cfg.data
    rng = np.random.default_rng(d.split_seed)
    w = rng.standard_normal((d.num_features, 1))
    b = rng.standard_normal(1)
    x = rng.standard_normal((d.num_samples, d.num_features))
    y = x @ w + b + 0.1 * rng.standard_normal((d.num_samples, 1))
    x, y = x.astype(np.float32), y.astype(np.float32)
    (xt, yt), (xe, ye) = _split_arrays(cfg, x, y)
    info = DataInfo(
        "regression",
        (d.num_features,),
        None,
        1,
        None,
        None,
        f"synthetic_regression: {len(xt)} train / {len(xe)} eval, {d.num_features} features, "
        f"noise std 0.1 (MSE floor 0.01)",
        fingerprint(x, y),
    )
    return ArrayDataset(xt, yt), ArrayDataset(xe, ye), info


def synthetic_classification(cfg: Config):
    """num_classes unit-variance gaussian blobs whose centres are N(0, 1) per feature.

    With the default 16 features the centres sit ~5.7 standard deviations apart: learnable to high
    accuracy by any of the models, but not separable at initialisation.
    """
    d = cfg.data
    rng = np.random.default_rng(d.split_seed)
    centres = rng.standard_normal((d.num_classes, d.num_features))
    y = rng.integers(0, d.num_classes, d.num_samples)
    x = (centres[y] + rng.standard_normal((d.num_samples, d.num_features))).astype(np.float32)
    y = y.astype(np.int64)
    (xt, yt), (xe, ye) = _split_arrays(cfg, x, y)
    info = DataInfo(
        "classification",
        (d.num_features,),
        d.num_classes,
        None,
        None,
        None,
        f"synthetic_classification: {len(xt)} train / {len(xe)} eval, {d.num_classes} gaussian blobs "
        f"in {d.num_features} dims",
        fingerprint(x, y),
    )
    return ArrayDataset(xt, yt), ArrayDataset(xe, ye), info


class ShiftAugment:
    """Random integer shifts of up to MAX_SHIFT pixels per sample, seeded by (seed, epoch, index).

    Vectorised over the batch: pad by MAX_SHIFT with the background value, then gather each sample's
    shifted crop with one advanced-indexing operation. A class rather than a closure so the dataset pickles
    into spawned DataLoader workers.
    """

    def __init__(self, background: float, max_shift: int = MAX_SHIFT):
        self.background, self.max_shift = background, max_shift

    def __call__(self, x: torch.Tensor, idx: torch.Tensor, seed: int, epoch: int) -> torch.Tensor:
        if x.numel() == 0:
            return x
        m = self.max_shift
        h = sample_hash(seed, epoch, idx.numpy())
        span = np.uint64(2 * m + 1)
        dy = torch.from_numpy((h % span).astype(np.int64) - m)
        dx = torch.from_numpy(((h >> np.uint64(32)) % span).astype(np.int64) - m)
        b, c, hh, ww = x.shape
        padded = F.pad(x, (m,) * 4, value=self.background)
        # out[i, j] = in[i - dy, j - dx]  ->  padded row index m - dy + i
        rows = (m - dy)[:, None, None] + torch.arange(hh)[None, :, None]
        cols = (m - dx)[:, None, None] + torch.arange(ww)[None, None, :]
        bi = torch.arange(b)[:, None, None]
        return torch.stack([padded[:, ch][bi, rows, cols] for ch in range(c)], dim=1)


def _load_digits():
    """The same arrays as sklearn.datasets.load_digits(), read straight from the file sklearn ships.

    `import sklearn.datasets` costs ~0.9 s of start-up (most of `make train`'s time to first step beyond
    importing torch); the file itself is 60 kB. Falls back to sklearn if its layout ever changes.
    """
    spec = importlib.util.find_spec("sklearn")
    path = (
        os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz") if spec else ""
    )
    if not os.path.isfile(path):
        from sklearn.datasets import load_digits

        return load_digits()
    table = np.loadtxt(path, delimiter=",")
    return SimpleNamespace(data=table[:, :-1], target=table[:, -1].astype(int))


def digits(cfg: Config):
    """sklearn's bundled 8x8 digits, bilinearly upsampled once to 1x28x28 and standardised.

    The mean/std are those of all 1797 upsampled images (a fixed property of the bundled data), so the
    normalisation does not change with ``data.classes`` or the split: a model pretrained on a class subset
    sees the same inputs when fine-tuned on all classes. The split is made before the class filter for the
    same reason: an image is in train or eval regardless of which classes are kept.
    """
    d = cfg.data
    raw = _load_digits()
    images = torch.from_numpy(raw.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    x = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    mean, std = float(x.mean()), float(x.std())
    x = (x - mean) / std
    y = torch.from_numpy(raw.target.astype(np.int64))
    bad = sorted(set(d.classes) - set(range(10)))
    if bad:
        raise ConfigError(f"data.classes={d.classes!r}: digits classes must be in 0..9 (got {bad})")
    tr, ev = (torch.from_numpy(i) for i in split_indices(len(x), d.eval_fraction, d.split_seed))
    if d.classes:
        keep = torch.tensor(sorted(set(d.classes)))
        tr, ev = tr[torch.isin(y[tr], keep)], ev[torch.isin(y[ev], keep)]
    augment = ShiftAugment(background=(0.0 - mean) / std) if d.augment else None
    train = ArrayDataset(x[tr], y[tr], augment=augment, seed=cfg.seed)
    evald = ArrayDataset(x[ev], y[ev])  # never augment evaluation
    kept = f", classes {sorted(set(d.classes))}" if d.classes else ""
    aug = f", shift augment ±{MAX_SHIFT}px" if d.augment else ""
    info = DataInfo(
        "classification",
        (1, IMAGE_SIZE, IMAGE_SIZE),
        10,
        None,
        None,
        None,
        f"digits: {len(train)} train / {len(evald)} eval, 8x8 upsampled to {IMAGE_SIZE}x{IMAGE_SIZE}"
        f"{kept}{aug}",
        fingerprint(raw.data, raw.target),
        extra={"mean": mean, "std": std},
    )
    return train, evald, info


def diabetes(cfg: Config):
    """sklearn's bundled diabetes regression (442 x 10), features and target standardised.

    Statistics come from the training split only (no eval leakage); they are kept on the datasets and in
    ``DataInfo.extra`` so predictions can be mapped back with y * y_std + y_mean.
    """
    from sklearn.datasets import load_diabetes  # ~0.9 s import: only for this recipe

    d = cfg.data
    raw = load_diabetes(scaled=False)
    x, y = raw.data.astype(np.float64), raw.target.astype(np.float64).reshape(-1, 1)
    tr, ev = split_indices(len(x), d.eval_fraction, d.split_seed)
    x_mean, x_std = x[tr].mean(0), x[tr].std(0)
    y_mean, y_std = float(y[tr].mean()), float(y[tr].std())
    xs = ((x - x_mean) / x_std).astype(np.float32)
    ys = ((y - y_mean) / y_std).astype(np.float32)
    train = ArrayDataset(torch.from_numpy(xs[tr]), torch.from_numpy(ys[tr]))
    evald = ArrayDataset(torch.from_numpy(xs[ev]), torch.from_numpy(ys[ev]))
    stats = {"x_mean": x_mean.tolist(), "x_std": x_std.tolist(), "y_mean": y_mean, "y_std": y_std}
    for ds in (train, evald):
        ds.stats = stats
    info = DataInfo(
        "regression",
        (x.shape[1],),
        None,
        1,
        None,
        None,
        f"diabetes: {len(tr)} train / {len(ev)} eval, {x.shape[1]} features, standardised target "
        f"(mean {y_mean:.1f}, std {y_std:.1f})",
        fingerprint(raw.data, raw.target),
        extra=stats,
    )
    return train, evald, info

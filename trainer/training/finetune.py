"""Fine-tuning: weights from elsewhere (``model.init_from``), LoRA adapters and a report of what trains.

``prepare_for_finetune(module, cfg)`` is the one call ``train()`` makes right after ``build_model``:

1. ``model.init_from=PATH`` loads weights from a run dir, a checkpoints/ dir, one checkpoint dir (ours:
   checksums verified, then ``torch.load(weights_only=True)``; FSDP runs save the same full state dict), a
   ``.safetensors`` file, or a state-dict file (``.pt``/``.pth``/``.bin``, read with ``weights_only=True``
   only, so a pickle that would run code is refused). Strict by default: missing or unexpected keys are a
   config error; ``model.init_strict=false`` loads what matches and prints the rest. A tensor whose shape
   changed keeps the new model's fresh initialisation and is reported ("re-initialised"); under strict
   loading that is allowed for one module only (the head, e.g. a new number of classes).
2. ``lora.targets=[patterns]`` wraps matching ``nn.Linear`` layers in :class:`LoRALinear`
   (y = W x + b + (alpha/rank) * B A dropout(x), with B = 0 at the start so the wrapped model computes exactly
   what it did before) and freezes every base parameter except ``lora.trainable`` patterns and heads that
   were re-initialised. After training, ``weights.merge_lora_state`` folds B A into W, so
   ``model.safetensors`` holds plain weights.
3. ``train.freeze`` is applied (the same ``apply_freeze`` that ``train()`` calls again; it is idempotent)
   and a per-module table of trainable parameters is logged.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config, ConfigError
from .optim import apply_freeze, name_matches
from .weights import lora_merge, read_weights

log = logging.getLogger("trainer")

# ----------------------------------------------------------------------------- loading into a module


@dataclass
class LoadReport:
    loaded: list[str]
    missing: list[str]
    unexpected: list[str]
    reinit: list[tuple[str, str]]  # (name, why): shape changed, or skipped by model.init_skip


def _owner(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _short(names: list[str], n: int = 6) -> str:
    return ", ".join(names[:n]) + (f" ... (+{len(names) - n} more)" if len(names) > n else "")


def load_into(
    module: nn.Module, sd: dict, strict: bool = True, skip: tuple = (), key: str = "model.init_from"
) -> LoadReport:
    """Copy matching tensors of ``sd`` into ``module``; shape-changed or skipped ones keep a fresh init."""
    own = module.state_dict()
    skipped = sorted(k for k in own if any(name_matches(k, p) for p in skip))
    missing = sorted(k for k in own if k not in sd and k not in skipped)
    unexpected = sorted(k for k in sd if k not in own)
    if strict and (missing or unexpected):
        parts = ([f"missing {_short(missing)}"] if missing else []) + (
            [f"unexpected {_short(unexpected)}"] if unexpected else []
        )
        raise ConfigError(
            f"{key}: keys do not match the model ({'; '.join(parts)}); set model.init_strict=false "
            "to load the matching ones"
        )
    changed = [k for k in own if k in sd and k not in skipped and own[k].shape != sd[k].shape]
    owners = sorted({_owner(k) for k in changed})
    if strict and len(owners) > 1:
        raise ConfigError(
            f"{key}: shapes differ in several modules ({_short(owners)}); only a head may change "
            "shape under strict loading (set model.init_strict=false to re-initialise them all)"
        )
    reinit = [
        (k, f"shape {tuple(own[k].shape)} in the model, {tuple(sd[k].shape)} in the file") for k in changed
    ]
    reinit += [(k, "model.init_skip") for k in skipped]
    load = {k: v for k, v in sd.items() if k in own and k not in skipped and k not in changed}
    module.load_state_dict(load, strict=False)
    return LoadReport(sorted(load), missing, unexpected, reinit)


def init_from(module: nn.Module, cfg: Config) -> LoadReport:
    path, strict = cfg.model.init_from, cfg.model.init_strict
    w = read_weights(path)
    rep = load_into(module, w.state, strict, tuple(cfg.model.init_skip))
    n = sum(w.state[k].numel() for k in rep.loaded)
    log.info("init_from: %d tensors (%s parameters) from %s", len(rep.loaded), f"{n:,}", w.source)
    for name, why in rep.reinit:
        log.warning("init_from: %s re-initialised (%s)", name, why)
    if rep.missing:
        log.warning("init_from: missing in the file (fresh init): %s", ", ".join(rep.missing))
    if rep.unexpected:
        log.warning("init_from: unexpected in the file (ignored): %s", ", ".join(rep.unexpected))
    return rep


# ----------------------------------------------------------------------------- LoRA


class LoRALinear(nn.Linear):
    """nn.Linear plus a low-rank update: y = x W^T + b + scale * dropout(x) A^T B^T, scale = alpha / rank.

    ``weight`` and ``bias`` keep their names (so freeze patterns and checkpoints still name them as
    before); the adapter adds ``lora_A`` (rank x in, Kaiming-uniform like nn.Linear), ``lora_B`` (out x
    rank, zeros: the wrapped layer starts as an exact no-op) and the buffer ``lora_scale``, which travels
    in every state dict so a checkpoint can be merged without its config.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.register_buffer("lora_scale", torch.tensor(alpha / rank, dtype=torch.float32, device=w.device))
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)
        return F.linear(x, self.weight, self.bias) + delta * self.lora_scale.to(delta.dtype)

    def merged(self) -> nn.Linear:
        """A plain nn.Linear holding W + scale * B A (new tensors; this module is unchanged)."""
        lin = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        with torch.no_grad():
            lin.weight.copy_(lora_merge(self.weight, self.lora_A, self.lora_B, self.lora_scale))
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        lin.weight.requires_grad_(self.weight.requires_grad)
        return lin


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def apply_lora(
    module: nn.Module, targets: list[str], rank: int, alpha: float, dropout: float = 0.0
) -> list[str]:
    """Wrap every nn.Linear whose module name matches a pattern; returns the wrapped names."""
    linears = {n: m for n, m in module.named_modules() if type(m) is nn.Linear}
    chosen = [n for n in linears if any(name_matches(n, p) for p in targets)]
    if not chosen:
        raise ConfigError(
            f"lora.targets={targets!r}: matches no nn.Linear (the model has: {_short(list(linears), 12)})"
        )
    owners: dict[int, list[str]] = {}
    for n, m in module.named_modules():
        for pn, p in m.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append(f"{n}.{pn}" if n else pn)
    for n in chosen:
        tied = owners[id(linears[n].weight)]
        if len(tied) > 1:  # merging would silently change the other user of the same matrix
            raise ConfigError(
                f"lora.targets: {n}.weight is tied to {', '.join(t for t in tied if t != n + '.weight')}; "
                "LoRA on a tied weight is not supported"
            )
        _set_submodule(module, n, LoRALinear(linears[n], rank, alpha, dropout))
    return chosen


def merge_lora(module: nn.Module) -> nn.Module:
    """Replace every LoRALinear by a plain nn.Linear with the merged weight (in place; returns module)."""
    for n, m in list(module.named_modules()):
        if isinstance(m, LoRALinear):
            _set_submodule(module, n, m.merged())
    return module


# ----------------------------------------------------------------------------- reporting


def trainable_table(module: nn.Module) -> str:
    """Trainable / total parameters per top-level module, one line each, then the total."""
    rows: dict[str, list[int]] = {}
    for name, p in module.named_parameters():
        top = name.split(".", 1)[0]
        r = rows.setdefault(top, [0, 0])
        r[1] += p.numel()
        r[0] += p.numel() if p.requires_grad else 0
    t = sum(r[0] for r in rows.values())
    n = sum(r[1] for r in rows.values())
    lines = [f"  {k:<16} {a:>12,} / {b:<12,} trainable" for k, (a, b) in rows.items()]
    lines.append(f"  {'total':<16} {t:>12,} / {n:<12,} trainable ({100.0 * t / max(n, 1):.2f}%)")
    return "\n".join(lines)


def _group_lines(module: nn.Module, cfg: Config) -> list[str]:
    specs = cfg.optim.param_groups
    counts = [0] * (len(specs) + 1)
    for name, p in module.named_parameters():
        if p.requires_grad:
            counts[
                next((i for i, g in enumerate(specs) if name_matches(name, g["pattern"])), len(specs))
            ] += p.numel()
    lines = [
        f"  lr {float(g.get('lr', cfg.optim.lr)):g} for {g['pattern']!r}: {c:,} parameters"
        for g, c in zip(specs, counts)
    ]
    return lines + [f"  lr {cfg.optim.lr:g} for the rest: {counts[-1]:,} parameters"]


def prepare_for_finetune(module: nn.Module, cfg: Config) -> nn.Module:
    """init_from, LoRA wrapping, freezing, and the trainable-parameter report. A no-op for plain runs."""
    reinit: list[str] = []
    if cfg.model.init_from:
        reinit = [n for n, _ in init_from(module, cfg).reinit]
    lo = cfg.lora
    if lo.targets:
        wrapped = apply_lora(module, lo.targets, lo.rank, lo.alpha, lo.dropout)
        keep = list(lo.trainable)
        for name, p in module.named_parameters():
            adapter = name.endswith((".lora_A", ".lora_B"))
            p.requires_grad_(adapter or name in reinit or any(name_matches(name, k) for k in keep))
        kept = [n for n in reinit if not any(name_matches(n, k) for k in keep)]
        if kept:
            log.info("lora: %s stay trainable (re-initialised by init_from)", ", ".join(kept))
        log.info(
            "lora: %s wrapped (rank %d, alpha %g, dropout %g); base weights frozen except %s",
            ", ".join(wrapped),
            lo.rank,
            lo.alpha,
            lo.dropout,
            keep or "none",
        )
    if cfg.model.init_from or lo.targets or cfg.train.freeze or cfg.optim.param_groups:
        apply_freeze(module, cfg.train.freeze)  # train() applies it again: idempotent
        log.info("trainable parameters:\n%s", trainable_table(module))
        if cfg.optim.param_groups:
            log.info("learning rates:\n%s", "\n".join(_group_lines(module, cfg)))
    return module

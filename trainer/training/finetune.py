"""Fine-tuning: weights from elsewhere (``model.init_from``), LoRA adapters and a report of what trains.

``prepare_for_finetune(module, cfg)`` is the one call ``train()`` makes right after ``build_model``:

1. ``model.init_from=PATH`` loads weights from a run dir, a checkpoints/ dir, one checkpoint dir (ours:
   checksums verified, then ``torch.load(weights_only=True)``; FSDP runs save the same full state dict), a
   ``.safetensors`` file, or a state-dict file (``.pt``/``.pth``/``.bin``, read with ``weights_only=True``
   only, so a pickle that would run code is refused). Strict by default: missing or unexpected keys are a
   config error; ``model.init_strict=false`` loads what matches and prints the rest. A tensor whose shape
   changed keeps the new model's fresh initialisation and is reported ("re-initialised"); under strict
   loading that is allowed for one module only (the head, e.g. a new number of classes).
2. ``lora.targets=[patterns]`` puts peft LoRA adapters on the matching ``nn.Linear`` layers: our patterns
   (exact names, dotted suffixes such as ``q_proj``, globs such as ``blocks.*.attn.c_attn``, ``re:``) are
   resolved to exact module names first (peft rejects globs), ``lora.trainable`` and heads re-initialised
   by ``init_from`` become peft's ``modules_to_save``, and LoRA on a weight tied to another module (a GPT's
   ``lm_head``) is refused (peft would accept it and merging would change the embedding too). peft's B
   starts at zero, so the wrapped model computes exactly what it did before. After training,
   ``weights.merge_lora_state`` folds (alpha/rank) B A into W, so ``model.safetensors`` holds plain weights.
3. ``train.freeze`` is applied (the same ``apply_freeze`` that ``train()`` calls again; it is idempotent)
   and a per-module table of trainable parameters is logged.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass

from torch import nn

from ..checkpoint.weights import read_weights
from ..config import Config, ConfigError
from ..data.tokenizer import require_hf
from .optim import apply_freeze, name_matches

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


# ----------------------------------------------------------------------------- LoRA (peft)


def _resolves(name: str, pattern: str) -> bool:
    """A module name chosen by a ``lora.*`` pattern: glob / re:REGEX (``name_matches``), or peft's own
    convention of an exact name or a dotted suffix (``q_proj`` picks ``model.layers.0.self_attn.q_proj``)."""
    return name_matches(name, pattern) or name == pattern or name.endswith("." + pattern)


def resolve_targets(module: nn.Module, targets: list[str]) -> list[str]:
    """Exact names of the nn.Linear layers our patterns pick (peft rejects globs); tied weights refused."""
    linears = {n: m for n, m in module.named_modules() if isinstance(m, nn.Linear)}
    chosen = [n for n in linears if any(_resolves(n, p) for p in targets)]
    if not chosen:
        raise ConfigError(
            f"lora.targets={targets!r}: matches no nn.Linear (the model has: {_short(list(linears), 12)})"
        )
    owners: dict[int, list[str]] = {}
    for n, m in module.named_modules(remove_duplicate=False):
        for pn, p in m.named_parameters(recurse=False):
            owners.setdefault(id(p), []).append(f"{n}.{pn}" if n else pn)
    for n in chosen:
        tied = sorted(set(owners[id(linears[n].weight)]) - {n + ".weight"})
        if tied:  # merging would silently change the other user of the same matrix (peft accepts it)
            raise ConfigError(
                f"lora.targets: {n}.weight is tied to {', '.join(tied)}; "
                "LoRA on a tied weight is not supported"
            )
    return chosen


def _modules_to_save(module: nn.Module, patterns: list[str]) -> list[str]:
    """The modules owning parameters that ``lora.trainable`` (or a re-initialised head) names."""
    out = []
    for n, m in module.named_modules():
        own = [f"{n}.{pn}" if n else pn for pn, _ in m.named_parameters(recurse=False)]
        if n and any(name_matches(q, p) for q in own for p in patterns):
            out.append(n)
    return out


def apply_lora(module: nn.Module, cfg: Config, keep: list[str]) -> nn.Module:
    """``peft.get_peft_model`` with our keys: targets resolved to exact names, ``keep`` patterns mapped to
    ``modules_to_save`` (and within those, only the parameters they name train)."""
    peft = require_hf("lora.targets", "peft")
    lo = cfg.lora
    names = resolve_targets(module, lo.targets)
    save = _modules_to_save(module, keep)
    hf = type(module).__module__.startswith("transformers.")
    pc = peft.LoraConfig(
        r=lo.rank,
        lora_alpha=lo.alpha,
        lora_dropout=lo.dropout,
        target_modules="^(" + "|".join(re.escape(n) for n in names) + ")$",  # exact names, full match
        modules_to_save=save or None,  # peft matches these by name suffix; ours are exact names
        task_type="CAUSAL_LM" if hf else None,
    )
    with warnings.catch_warnings():  # peft warns about custom (non-transformers) models
        warnings.simplefilter("ignore")
        wrapped = peft.get_peft_model(module, pc)
    for name, p in wrapped.named_parameters():
        if ".modules_to_save." in name:  # a copy of a whole module: only the named parameters train
            p.requires_grad_(any(name_matches(name, k) for k in keep))
    wrapped.lora_targets = names
    log.info(
        "lora (peft): %s wrapped (rank %d, alpha %g, dropout %g); base weights frozen except %s",
        _short(names, 8),
        lo.rank,
        lo.alpha,
        lo.dropout,
        keep or "none",
    )
    return wrapped


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
        kept = [n for n in reinit if not any(name_matches(n, k) for k in lo.trainable)]
        if kept:
            log.info("lora: %s stay trainable (re-initialised by init_from)", ", ".join(kept))
        task = getattr(module, "task", None)
        module = apply_lora(module, cfg, list(lo.trainable) + kept)
        if task is not None:
            module.task = task
    if cfg.model.init_from or lo.targets or cfg.train.freeze or cfg.optim.param_groups:
        apply_freeze(module, cfg.train.freeze)  # train() applies it again: idempotent
        log.info("trainable parameters:\n%s", trainable_table(module))
        if cfg.optim.param_groups:
            log.info("learning rates:\n%s", "\n".join(_group_lines(module, cfg)))
    return module

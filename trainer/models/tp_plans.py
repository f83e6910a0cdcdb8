"""Tensor-parallel plans: which Linear layers are split column-wise or row-wise over the ``tp`` mesh.

A plan maps module-name globs to a style: ``colwise`` (the output features are split: a Linear whose
output feeds per-head or per-channel work), ``rowwise`` (the input features are split and the outputs
all-reduced: the Linear after a colwise one), ``replicate`` (left whole). Where the plan comes from:

- the built-in GPT: its MLP (``c_fc`` colwise, ``c_proj`` rowwise). Attention stays replicated: its q, k
  and v come out of one fused ``c_attn`` whose rows are [q; k; v], so a contiguous split would hand a rank
  q of every head and half of k, not whole heads;
- ``model.name=hf``: the ``base_model_tp_plan`` its config carries (transformers writes one for Llama,
  Qwen2, Mistral, ...), under the model's ``base_model_prefix``;
- ``parallel.tp_plan``: overrides both, glob by glob.

The embeddings and ``lm_head`` are never split, so the logits are whole (gathered) on every tensor-parallel
rank and the loss and eval metrics are the ones of one process; the price is the lm_head's memory and
matmul on every rank (vocab-parallel logits with a parallel cross-entropy would save both).
"""

from __future__ import annotations

import fnmatch
import logging

from torch import nn

from ..config import ConfigError

log = logging.getLogger("trainer")

GPT_PLAN = {"blocks.*.mlp.c_fc": "colwise", "blocks.*.mlp.c_proj": "rowwise"}

# transformers' style names that mean plain column- or row-wise Linear splits with whole outputs; the others
# (packed, local_*, sequence_parallel, ep_*) need its own modules and are refused with the name.
_HF_STYLES = {"colwise": "colwise", "rowwise": "rowwise", "colwise_rep": "colwise", "rowwise_rep": "rowwise"}


def model_plan(module: nn.Module) -> tuple[dict, str]:
    """The model's own plan (full module-name globs -> style) and where it came from."""
    from .gpt import GPT

    if isinstance(module, GPT):
        return dict(GPT_PLAN), "the built-in GPT's plan"
    config = getattr(module, "config", None)
    base = getattr(config, "base_model_tp_plan", None)
    if base:
        prefix = getattr(module, "base_model_prefix", "")
        if prefix and not hasattr(module, prefix):
            prefix = ""
        plan = {}
        for pattern, style in base.items():
            name = f"{prefix}.{pattern}" if prefix else pattern
            if style not in _HF_STYLES:
                raise ConfigError(
                    f"parallel.tp: {type(module).__name__}'s base_model_tp_plan has {pattern!r}: {style!r}, "
                    "which the trainer does not apply; set parallel.tp_plan for it (colwise | rowwise | "
                    "replicate)"
                )
            plan[name] = _HF_STYLES[style]
        return plan, f"{type(module).__name__}'s base_model_tp_plan"
    return {}, ""


def resolve(module: nn.Module, override: dict) -> tuple[dict[str, str], str]:
    """Module name -> colwise | rowwise for every Linear the plan splits, and where the plan came from."""
    plan, source = model_plan(module)
    if override:
        plan.update(override)
        source = f"{source} + parallel.tp_plan" if source else "parallel.tp_plan"
    if not plan:
        raise ConfigError(
            f"parallel.tp: {type(module).__name__} has no tensor-parallel plan; set parallel.tp_plan "
            "(module-name glob -> colwise | rowwise)"
        )
    out: dict[str, str] = {}
    used = set()
    for name, sub in module.named_modules():
        # the last glob that matches wins: parallel.tp_plan entries come after the model's
        style = next((s for p, s in reversed(plan.items()) if fnmatch.fnmatchcase(name, p)), None)
        if style is None:
            continue
        used.update(p for p in plan if fnmatch.fnmatchcase(name, p))
        if style == "replicate":
            continue
        if not isinstance(sub, nn.Linear):
            raise ConfigError(
                f"parallel.tp_plan: {name} ({type(sub).__name__}) matches a {style} entry, but only "
                "nn.Linear layers are split"
            )
        out[name] = style
    unused = [p for p in override if p not in used]
    if unused:
        raise ConfigError(f"parallel.tp_plan[{unused[0]!r}]: matches no module of {type(module).__name__}")
    _check_pairs(out)
    return out, source


def _check_pairs(plan: dict[str, str]) -> None:
    """A colwise Linear's output stays split, so a rowwise Linear after it must take it back; a rowwise
    Linear with no colwise before it would read a whole input as its slice. Without this a lone half
    fails at the first forward as a shape mismatch (exit 1, traceback). Module order stands in for
    execution order, as it does for every plan the models carry."""
    styles = list(plan.items())
    if styles and styles[-1][1] == "colwise":
        name = styles[-1][0]
        raise ConfigError(
            f"parallel.tp_plan: {name} is colwise with no rowwise Linear after it; its output stays split "
            "across the tp ranks, so pair it with the Linear that reads it (rowwise)"
        )
    if styles and styles[0][1] == "rowwise":
        name = styles[0][0]
        raise ConfigError(
            f"parallel.tp_plan: {name} is rowwise with no colwise Linear before it; it expects its input "
            "split across the tp ranks, so pair it with the Linear that feeds it (colwise)"
        )


def check_divisible(module: nn.Module, plan: dict[str, str], tp: int) -> None:
    """Every split dimension divides by ``tp``, and attention heads split whole."""
    for name, style in plan.items():
        lin = module.get_submodule(name)
        n = lin.out_features if style == "colwise" else lin.in_features
        if n % tp:
            raise ConfigError(
                f"parallel.tp={tp}: {name} has {n} {'output' if style == 'colwise' else 'input'} features, "
                f"not divisible by {tp}"
            )
    config = getattr(module, "config", None)
    for key in ("num_attention_heads", "num_key_value_heads"):
        heads = getattr(config, key, None)
        if heads and any(".self_attn." in n or ".attn." in n for n in plan) and heads % tp:
            raise ConfigError(f"parallel.tp={tp}: the model's {key}={heads} is not divisible by {tp}")


def apply(module: nn.Module, plan: dict[str, str], tp_mesh) -> None:
    """Split the plan's Linears over ``tp_mesh`` (in place: parameter names stay, their values become
    DTensors). Each rank keeps its own slice of its own copy (``src_data_rank=None``): the weights are
    identical on every rank (seeded init, or filled from rank 0 afterwards), so nothing is sent."""
    from torch.distributed.tensor.parallel import (  # ~0.5 s import: only with parallel.tp > 1
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
    parallelize_module(module, tp_mesh, {n: styles[s]() for n, s in plan.items()}, src_data_rank=None)

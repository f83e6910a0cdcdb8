"""Magnitude pruning: unstructured (torch.nn.utils.prune, global or per layer) and structured channel removal.

Unstructured pruning zeroes individual weights. The tensors keep their shape, so on disk (dense
safetensors) and in latency it saves nothing by itself; it is reported as it is. The short fine-tune runs
with the masks on (``weight = weight_orig * mask`` in a forward pre-hook, so pruned entries stay zero),
then :func:`make_permanent` folds the masks in and the sparsity is checked again.

Structured pruning removes whole output channels of a Conv2d/Linear (those with the smallest L2 norm)
and the matching input channels of the layers that consume them, so the tensors really shrink. Which
layer feeds which is read from a ``torch.fx`` trace: a producer is prunable when every path from it reaches
Conv2d/Linear consumers through channel-preserving ops only (activations, pooling, dropout, flatten). The
model's output layer is never pruned (nothing consumes it), so the output stays the same size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as tprune

from ..config import ConfigError
from ..training.optim import name_matches
from ..training.tasks import task_loss

log = logging.getLogger("trainer")

_LAYERS = (nn.Linear, nn.Conv2d)


def targets(module: nn.Module, patterns: list[str]) -> list[tuple[str, nn.Module]]:
    """Linear/Conv2d layers (by module name) matching any pattern; all of them when patterns is empty."""
    found = [(n, m) for n, m in module.named_modules() if isinstance(m, _LAYERS)]
    if patterns:
        found = [(n, m) for n, m in found if any(name_matches(n, p) for p in patterns)]
        if not found:
            raise ConfigError(
                f"--layers {','.join(patterns)}: matches no Linear/Conv2d layer (the model has: "
                f"{', '.join(n for n, m in module.named_modules() if isinstance(m, _LAYERS))})"
            )
    return found


# ----------------------------------------------------------------------------- unstructured


def unstructured(module: nn.Module, amount: float, scope: str, patterns: list[str]) -> list[str]:
    """Attach L1-magnitude masks to the weights of the chosen layers; returns their names."""
    layers = targets(module, patterns)
    if scope == "global":
        tprune.global_unstructured(
            [(m, "weight") for _, m in layers], pruning_method=tprune.L1Unstructured, amount=amount
        )
    else:
        for _, m in layers:
            tprune.l1_unstructured(m, "weight", amount=amount)
    return [n for n, _ in layers]


def expected_zeros(module: nn.Module, names: list[str], amount: float, scope: str) -> int:
    """What torch.nn.utils.prune removes: round(amount * n) of all chosen weights, or of each layer's."""
    sizes = [module.get_submodule(n).weight.numel() for n in names]
    if scope == "global":
        return round(amount * sum(sizes))
    return sum(round(amount * s) for s in sizes)


def make_permanent(module: nn.Module) -> None:
    """Fold every pruning mask into its weight (weight_orig * mask) and drop the hooks."""
    for m in module.modules():
        for hook in list(getattr(m, "_forward_pre_hooks", {}).values()):
            if isinstance(hook, tprune.BasePruningMethod):
                tprune.remove(m, hook._tensor_name)


def weight_sparsity(module: nn.Module, names: list[str]) -> tuple[int, int]:
    """(zeros, entries) over the weights of the named layers."""
    ws = [module.get_submodule(n).weight for n in names]
    return sum(int((w == 0).sum()) for w in ws), sum(w.numel() for w in ws)


# ----------------------------------------------------------------------------- short fine-tune


def short_finetune(
    module: nn.Module, train_ds, task: str, steps: int, batch_size: int, lr: float, seed: int
) -> float:
    """A few SGD(momentum 0.9) steps on the training split; returns the mean loss of the last 10 steps."""
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    gen = torch.Generator().manual_seed(seed)
    module.train()
    if hasattr(train_ds, "set_epoch"):
        train_ds.set_epoch(0)
    order, pos, recent = torch.randperm(len(train_ds), generator=gen), 0, []
    for _ in range(steps):
        if pos + batch_size > len(order):
            order, pos = torch.randperm(len(train_ds), generator=gen), 0
        x, y = train_ds.get_batch(order[pos : pos + batch_size])
        pos += batch_size
        loss = task_loss(task, module(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        recent = (recent + [loss.item()])[-10:]
    module.eval()
    return sum(recent) / max(len(recent), 1)


# ----------------------------------------------------------------------------- structured


_PASS_FUNCS = {
    F.relu,
    torch.relu,
    F.gelu,
    F.silu,
    F.leaky_relu,
    torch.tanh,
    torch.sigmoid,
    F.dropout,
    F.max_pool2d,
    F.avg_pool2d,
    torch.max_pool2d,
    torch.flatten,
    F.elu,
    F.hardtanh,
    F.relu6,
}
_PASS_METHODS = {"relu", "flatten", "contiguous", "tanh", "sigmoid"}
_PASS_MODULES = (
    nn.ReLU,
    nn.GELU,
    nn.SiLU,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.Dropout,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.Flatten,
    nn.Identity,
    nn.ELU,
    nn.ReLU6,
    nn.Hardtanh,
)
_FLATTENS = {torch.flatten, "flatten"}


@dataclass
class Group:
    producer: str  # layer whose output channels are removed
    consumers: list[tuple[str, int]]  # (layer, input entries per producer channel: 1, or H*W after flatten)


def channel_groups(module: nn.Module) -> list[Group]:
    """Producer -> consumer pairs through channel-preserving ops, from a torch.fx trace of the model."""
    try:
        gm = fx.symbolic_trace(module)
    except Exception as e:
        raise ConfigError(
            f"structured pruning needs a torch.fx-traceable model; tracing {type(module).__name__} "
            f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None
    mods = dict(module.named_modules())
    uses = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            uses[node.target] = uses.get(node.target, 0) + 1
    groups = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(mods[node.target], _LAYERS) or uses[node.target] > 1:
            continue
        prod = mods[node.target]
        if isinstance(prod, nn.Conv2d) and prod.groups != 1:
            continue
        consumers, ok, stack, seen = [], True, [(u, False) for u in node.users], set()
        while stack and ok:
            user, flat = stack.pop()
            if user in seen:
                continue
            seen.add(user)
            target = user.target
            if (
                user.op == "call_module"
                and isinstance(mods.get(target), _LAYERS)
                and user.args[0] is not None
            ):
                cons = mods[target]
                if isinstance(cons, nn.Conv2d) and (cons.groups != 1 or flat):
                    ok = False
                    continue
                n_out = prod.out_features if isinstance(prod, nn.Linear) else prod.out_channels
                n_in = cons.in_features if isinstance(cons, nn.Linear) else cons.in_channels
                if not flat and n_in != n_out or n_in % n_out or uses[target] > 1:
                    ok = False
                    continue
                consumers.append((target, n_in // n_out))
            elif (
                (user.op == "call_function" and user.target in _PASS_FUNCS)
                or (user.op == "call_method" and user.target in _PASS_METHODS)
                or (user.op == "call_module" and isinstance(mods.get(target), _PASS_MODULES))
            ):
                is_flat = user.target in _FLATTENS or isinstance(mods.get(target), nn.Flatten)
                stack += [(u, flat or is_flat) for u in user.users]
            else:  # getitem, reshapes that mix channels, anything unknown: leave this producer alone
                ok = False
        if ok and consumers:
            groups.append(Group(node.target, consumers))
    return groups


def _select(weight: torch.Tensor, dim: int, index: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(weight.detach().index_select(dim, index).clone(), requires_grad=weight.requires_grad)


def _resize(m: nn.Module, out_n: int | None = None, in_n: int | None = None) -> None:
    if isinstance(m, nn.Linear):
        m.out_features = out_n if out_n is not None else m.out_features
        m.in_features = in_n if in_n is not None else m.in_features
    else:
        m.out_channels = out_n if out_n is not None else m.out_channels
        m.in_channels = in_n if in_n is not None else m.in_channels


def prune_channels(module: nn.Module, amount: float, patterns: list[str]) -> list[dict]:
    """Remove round(amount * C) lowest-L2 output channels of each prunable producer (at least one is kept)."""
    chosen = {n for n, _ in targets(module, patterns)} if patterns else None
    changes = []
    for g in channel_groups(module):
        if chosen is not None and g.producer not in chosen:
            continue
        prod = module.get_submodule(g.producer)
        norms = prod.weight.detach().flatten(1).norm(dim=1)
        n = norms.numel()
        k = max(1, n - round(amount * n))
        keep = torch.sort(torch.topk(norms, k).indices).values
        prod.weight = _select(prod.weight, 0, keep)
        if prod.bias is not None:
            prod.bias = _select(prod.bias, 0, keep)
        _resize(prod, out_n=k)
        for name, factor in g.consumers:
            cons = module.get_submodule(name)
            cols = (keep[:, None] * factor + torch.arange(factor)[None, :]).flatten()
            cons.weight = _select(cons.weight, 1, cols)
            _resize(cons, in_n=cons.weight.shape[1])
        changes.append(
            {
                "layer": g.producer,
                "channels_before": n,
                "channels_after": k,
                "consumers": [c for c, _ in g.consumers],
            }
        )
    if not changes:
        raise ConfigError(
            "structured pruning: no prunable layer found (a layer qualifies when its output feeds "
            "other Linear/Conv2d layers through activations, pooling, dropout or flatten only)"
        )
    return changes


def fit_shapes(module: nn.Module, sd: dict) -> None:
    """Resize Linear/Conv2d layers to the shapes in ``sd`` (a structurally pruned state dict), to load it."""
    for name, m in module.named_modules():
        key = f"{name}.weight" if name else "weight"
        if isinstance(m, _LAYERS) and key in sd and tuple(sd[key].shape) != tuple(m.weight.shape):
            w = sd[key]
            m.weight = nn.Parameter(torch.empty_like(w))
            if m.bias is not None:
                m.bias = nn.Parameter(torch.empty(w.shape[0], dtype=w.dtype))
            _resize(m, out_n=w.shape[0], in_n=w.shape[1] * (m.groups if isinstance(m, nn.Conv2d) else 1))

"""Whether a state is a result: finite parameters, final loss and eval (issue 13: a diverged run never
exits 0, and a checkpoint never holds non-finite parameters)."""

from __future__ import annotations

import math
from typing import Optional

import torch

from ..runtime import dist


def all_finite(state: dist.DistState, params) -> bool:
    """Every parameter finite on every rank (collective). Skipped bad steps leave the parameters as they
    were, so a state inside a short bad streak is still good to checkpoint; NaN weights never are."""
    return dist.all_true(state, _local_finite(params))


def _local_finite(params) -> bool:
    """This rank's parameters (a sharded one's local shard) are finite: the smallest and largest value of
    each tensor (one read pass: NaN carries through both, -inf/+inf show in one; no overflow, no boolean copy
    of every weight, which cost ~7x more), then one host sync for all of them."""
    local = [(p.to_local() if hasattr(p, "to_local") else p).detach() for p in params]
    ends = [torch.stack(torch.aminmax(t)).float() for t in local if t.numel()]
    return not ends or bool(torch.isfinite(torch.cat(ends)).all())


def nonfinite_outcome(state: dist.DistState, tally, last_loss, last_eval: dict, params) -> Optional[str]:
    """Why a finished run is not a result, or None (collective: the parameter check)."""
    _, _, bad_run, _ = tally.peek()
    if last_loss is None or not math.isfinite(last_loss):
        return f"final loss is {last_loss}"
    if bad_run.item():
        return f"the run ended inside a streak of {int(bad_run.item())} non-finite step(s)"
    bad = [k for k, v in last_eval.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        return f"final eval {bad[0]} is {last_eval[bad[0]]}"
    if not all_finite(state, params):
        return "final parameters are non-finite"
    return None

"""Per-step loss and bad-step bookkeeping between log steps, without a host sync per step on a GPU."""

from __future__ import annotations

import torch

from ..runtime import dist


class HostTally:
    """When `ok` is already on the host (CPU): plain Python floats and ints."""

    on_host = True

    def __init__(self):
        self.loss, self.good = 0.0, 0
        self.bad_run = self.bad_max = 0
        self.bad_new = 0  # skipped steps not yet counted in Progress.bad_steps

    def add(self, value: float, ok: bool) -> None:
        if ok:
            self.loss += value
            self.good += 1
            self.bad_run = 0
        else:
            self.bad_run += 1
            self.bad_max = max(self.bad_max, self.bad_run)
            self.bad_new += 1

    def take_bad(self) -> int:
        """Skipped steps since the last call (added to Progress.bad_steps)."""
        n, self.bad_new = self.bad_new, 0
        return n

    def take(self) -> tuple[float, int, int]:
        """(loss sum, good steps, longest bad streak) since the last pull, as Python numbers (one process:
        no tensors to build for an all-reduce)."""
        out = (self.loss, self.good, self.bad_max)
        self.loss, self.good = 0.0, 0
        self.bad_max = self.bad_run
        return out

    def pull(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The same as tensors to all-reduce."""
        loss, good, bad = self.take()
        return (
            torch.tensor(loss, dtype=torch.float64),
            torch.tensor(float(good), dtype=torch.float64),
            torch.tensor(bad),
        )

    def peek(self) -> tuple[torch.Tensor, ...]:
        """(loss sum, good steps, current bad streak, longest bad streak) of the window, without a reset."""
        return tuple(
            torch.tensor(float(v), dtype=torch.float64)
            for v in (self.loss, self.good, self.bad_run, self.bad_max)
        )

    def restore(self, loss: float, good: float, bad_run: float, bad_max: float) -> None:
        """The window saved with a checkpoint (see Trainer._window)."""
        self.loss, self.good, self.bad_run, self.bad_max = float(loss), int(good), int(bad_run), int(bad_max)


class DeviceTally:
    """The same on the device (CUDA), read only at log intervals."""

    on_host = False

    def __init__(self, device):
        z = torch.zeros((), device=device)
        self.loss, self.good, self.bad_run, self.bad_max = z.clone(), z.clone(), z.clone(), z.clone()
        self.bad_new = z.clone()

    def add(self, total: torch.Tensor, ok: torch.Tensor) -> None:
        okf = ok.float()
        self.loss += torch.where(ok, total.float(), torch.zeros_like(self.loss))
        self.good += okf
        self.bad_run = (self.bad_run + 1) * (1 - okf)
        self.bad_max = torch.maximum(self.bad_max, self.bad_run)
        self.bad_new += 1 - okf

    def take_bad(self) -> int:
        """Skipped steps since the last call (one host sync: at log and checkpoint intervals only)."""
        n = int(self.bad_new.item())
        self.bad_new.zero_()
        return n

    def pull(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = (self.loss.clone(), self.good.clone(), self.bad_max.clone())
        self.loss.zero_()
        self.good.zero_()
        self.bad_max.copy_(self.bad_run)
        return out

    def peek(self) -> tuple[torch.Tensor, ...]:
        return tuple(t.detach().double().cpu() for t in (self.loss, self.good, self.bad_run, self.bad_max))

    def restore(self, loss: float, good: float, bad_run: float, bad_max: float) -> None:
        for t, v in zip((self.loss, self.good, self.bad_run, self.bad_max), (loss, good, bad_run, bad_max)):
            t.fill_(float(v))


def make_tally(device: torch.device):
    return HostTally() if device.type == "cpu" else DeviceTally(device)


def reduced_window(state: dist.DistState, tally) -> dict:
    """The log window in progress (loss sum, good steps, bad streaks since the last row) as the mean over
    all ranks, i.e. per step, not per rank-step: saved with a checkpoint and restored on every rank, so a
    resumed run's next row covers the same steps as an uninterrupted run's at any world size (collective).
    ``"per": "step"`` marks the unit; older checkpoints hold sums over ranks, restored on rank 0 alone."""
    loss_sum, good, bad_run, bad_max = tally.peek()
    sums = dist.all_reduce_sum(state, torch.stack([loss_sum.double(), good.double()])).tolist()
    bads = dist.all_reduce_max(state, torch.stack([bad_run.double(), bad_max.double()])).tolist()
    w = state.world_size
    return {
        "loss": sums[0] / w,
        "good": round(sums[1] / w),
        "bad_run": bads[0],
        "bad_max": bads[1],
        "per": "step",
    }

"""The log window saved with a checkpoint (issue 13, class 11): both tallies peek without resetting and
restore what they peeked, so a resumed run's next row covers the same steps. DeviceTally is the CUDA path;
its arithmetic is the same on a CPU tensor, which is how it is tested without a GPU."""

import math

import pytest
import torch

from trainer.training.tally import DeviceTally, HostTally


def _feed(t, values):
    for v in values:
        ok = math.isfinite(v)
        if t.on_host:
            t.add(v, ok)
        else:
            t.add(torch.tensor(v), torch.tensor(ok))


@pytest.mark.parametrize(
    "make", [HostTally, lambda: DeviceTally(torch.device("cpu"))], ids=["host", "device"]
)
def test_peek_restore_then_continue_equals_an_uninterrupted_window(make):
    first, rest = [0.5, float("nan"), float("nan"), 0.25], [0.125, float("inf"), 1.0]
    ref = make()
    _feed(ref, first + rest)
    cut = make()
    _feed(cut, first)
    window = [x.item() for x in cut.peek()]
    assert window[:3] == [0.75, 2.0, 0.0] and window[3] == 2.0  # loss sum, good, current streak, longest
    assert [x.item() for x in cut.peek()] == window  # peek does not reset
    resumed = make()
    resumed.restore(*window)
    _feed(resumed, rest)
    assert [x.item() for x in resumed.pull()] == [x.item() for x in ref.pull()]

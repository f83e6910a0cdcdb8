"""Skipped steps are counted the same by the host tally (CPU) and the device tally (CUDA; run here on CPU
tensors), and each count is handed over once (issue 27, class 8)."""

from __future__ import annotations

import torch

from trainer.training.tally import DeviceTally, HostTally

OKS = [True, False, True, False, False, True]


def test_host_and_device_tallies_count_skipped_steps_once():
    host, dev = HostTally(), DeviceTally(torch.device("cpu"))
    for ok in OKS[:4]:
        host.add(1.0, ok)
        dev.add(torch.tensor(1.0), torch.tensor(ok))
    assert host.take_bad() == dev.take_bad() == 2
    assert host.take_bad() == dev.take_bad() == 0  # handed over: not counted twice
    for ok in OKS[4:]:
        host.add(1.0, ok)
        dev.add(torch.tensor(1.0), torch.tensor(ok))
    assert host.take_bad() == dev.take_bad() == 1

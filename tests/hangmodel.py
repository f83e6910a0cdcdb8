"""A user model (model.name=tests.hangmodel:SleepyMLP) that stalls one rank inside a step, for hang tests."""

import os
import time

from torch import nn


class SleepyMLP(nn.Module):
    def __init__(
        self,
        in_features: int = 8,
        classes: int = 4,
        sleep_rank: int = 1,
        sleep_at_call: int = 3,
        sleep_s: float = 60.0,
    ):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, 16), nn.ReLU(), nn.Linear(16, classes))
        self.sleep_rank, self.sleep_at_call, self.sleep_s = sleep_rank, sleep_at_call, sleep_s
        self.calls = 0

    def forward(self, x):
        self.calls += self.training  # training forwards only: the trainer's probe runs one in eval mode
        if (
            self.training
            and self.calls == self.sleep_at_call
            and int(os.environ.get("RANK", 0)) == self.sleep_rank
        ):
            time.sleep(self.sleep_s)  # this rank never reaches the gradient all-reduce in time
        return self.net(x)

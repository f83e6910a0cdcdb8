"""The classic two-conv MNIST CNN (as in pytorch/examples), kept exact so results compare with the
literature and with raw-PyTorch benchmarks. Module names conv1, conv2, fc1, fc2 are part of the contract:
fine-tuning recipes select ``fc2`` by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SHAPE = (1, 28, 28)


class CNN(nn.Module):
    """conv(1->32, 3x3, pad 1) ReLU maxpool2 -> conv(32->64) ReLU maxpool2 -> fc 3136->128 ReLU -> fc->C."""

    def __init__(self, num_outputs: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, 128)
        self.fc2 = nn.Linear(128, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc2(x)

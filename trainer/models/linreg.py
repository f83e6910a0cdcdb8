"""Linear regression (or, on a classification task, multinomial logistic regression): one nn.Linear."""

from __future__ import annotations

import torch
from torch import nn


class LinReg(nn.Module):
    """Flattens the input, so any fixed input shape works; the single layer is named ``linear``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))

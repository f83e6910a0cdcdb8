"""Multi-layer perceptron: flatten, [Linear, ReLU, Dropout] per hidden width, then a Linear ``head``.

The hidden layers live in ``body`` and the output layer is ``head`` so fine-tuning can select it by name.
Dropout modules are present even at p=0 so the state-dict keys do not depend on the dropout setting.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self, input_shape: tuple, hidden: list[int], out_features: int, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten(1)]
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

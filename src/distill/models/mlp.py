"""Multi-layer perceptron: flatten -> [Linear -> ReLU -> Dropout]* -> Linear."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ._registry import register_model


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (128,), dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, *input_shape) -> (B, C)
        return self.net(x)


@register_model("mlp")
def mlp(*, input_shape: tuple[int, ...], num_classes: int, hidden: Sequence[int] = (128,), dropout: float = 0.0) -> MLP:
    return MLP(math.prod(input_shape), num_classes, hidden=hidden, dropout=dropout)

"""User factories named by import path in test recipes (`factories:...`)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset


def blobs(n: int = 96, classes: int = 3, dim: int = 5):
    """Three well-separated Gaussian blobs as (x, y) tuples — what a user's TensorDataset gives."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    x = torch.randn(n, dim, generator=g) * 0.3 + nn.functional.one_hot(y, dim).float() * 3
    ds = TensorDataset(x, y)
    return ds, ds, ds


def linear(in_features: int = 5, out_features: int = 3) -> nn.Module:
    return nn.Linear(in_features, out_features)


def not_a_model() -> str:
    return "nope"


class Elementwise(nn.Module):
    """Logits = the first `num_classes` inputs, scaled and shifted per class: no Linear/MatMul/Conv to quantize."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.scale = nn.Parameter(torch.ones(num_classes))
        self.shift = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B, num_classes)
        return x.flatten(1)[:, : self.num_classes] * self.scale + self.shift


def elementwise(num_classes: int = 10) -> nn.Module:
    return Elementwise(num_classes)

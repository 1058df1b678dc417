"""Small VGG-style CNN: [Conv3x3 -> BN -> ReLU -> (MaxPool)]* -> global average pool -> Linear.

Stages are named `features.<i>` so feature methods can tap them by `named_modules()` path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._registry import register_model


class CNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, channels: Sequence[int] = (32, 64), pool_every: int = 1):
        super().__init__()
        stages: list[nn.Module] = []
        c_in = in_channels
        for i, c in enumerate(channels):
            block: list[nn.Module] = [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            if (i + 1) % pool_every == 0:
                block.append(nn.MaxPool2d(2, ceil_mode=True))
            stages.append(nn.Sequential(*block))
            c_in = c
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


@register_model("cnn")
def cnn(
    *, input_shape: tuple[int, ...], num_classes: int, channels: Sequence[int] = (32, 64), pool_every: int = 1
) -> CNN:
    if len(input_shape) != 3:
        raise TypeError(f"cnn needs image inputs (C, H, W), got input_shape {tuple(input_shape)}")
    return CNN(input_shape[0], num_classes, channels=channels, pool_every=pool_every)

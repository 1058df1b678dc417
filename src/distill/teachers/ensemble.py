"""An ensemble of frozen teachers as one source (Hinton et al. 2015, the ensemble-to-one case).

The target is the (optionally weighted) mean of the members' *tempered* probabilities, `p = Σ_k w_k softmax(z_k / T)`.
So that every logit loss keeps working unchanged, the source returns logits whose tempered softmax is exactly `p`:
`T · log p` (softmax is shift-invariant, and `softmax(T log p / T) = p`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .live import LiveTeacher


class EnsembleTeacher:
    """`teacher(batch) -> (B, C)` logits with `softmax(logits / T) = mean_k softmax(z_k / T)`."""

    def __init__(self, models: Sequence[nn.Module], *, temperature: float, weights: Sequence[float] | None = None) -> None:
        if not models:
            raise ValueError("an ensemble needs at least one teacher")
        if weights is not None and (len(weights) != len(models) or any(w < 0 for w in weights) or sum(weights) <= 0):
            raise ValueError(f"ensemble weights {list(weights)} must be {len(models)} non-negative numbers, not all 0")
        self.members = [LiveTeacher(m) for m in models]
        self.temperature = float(temperature)
        w = torch.tensor(list(weights) if weights is not None else [1.0] * len(models), dtype=torch.float32)
        self.weights = w / w.sum()

    def to(self, device: torch.device) -> EnsembleTeacher:
        for m in self.members:
            m.to(device)
        return self

    def __call__(self, batch: Any) -> torch.Tensor:
        logits = torch.stack([m(batch) for m in self.members])  # (K, B, C) float32, detached
        log_p = torch.log_softmax(logits / self.temperature, dim=-1)  # (K, B, C)
        w = self.weights.to(log_p.device).view(-1, *([1] * (log_p.ndim - 1)))
        mixed = torch.logsumexp(log_p + w.log(), dim=0)  # log Σ_k w_k p_k, (B, C)
        return self.temperature * mixed

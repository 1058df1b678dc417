"""The student trained alone: cross-entropy on labels, no teacher. The baseline every method is compared with."""

from __future__ import annotations

from typing import Any

import torch

from ..batch import IGNORE_INDEX, forward_logits, inputs_of, labels_of, loss_units
from ..errors import DistillError
from ..losses import hard_loss
from .base import Method, register_method


@register_method("scratch")
class Scratch(Method):
    needs_teacher = False
    uses = frozenset()  # neither distill.temperature nor distill.alpha

    def units(self, batch: Any) -> int:
        """Its one term averages over the labelled rows: examples with a label, or labelled tokens."""
        labels = labels_of(batch)
        if isinstance(labels, torch.Tensor) and labels.ndim == 1:
            return int((labels != IGNORE_INDEX).sum())
        return loss_units(batch)

    def accumulation_note(self, batch: Any) -> str | None:
        return None  # `units` counts exactly the rows its one term averages over

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        labels = labels_of(batch)
        if labels is None:
            raise DistillError("training without a teacher needs labelled data; give the dataset labels")
        logits = forward_logits(self.student, inputs_of(batch))  # (B, C)
        loss = hard_loss(logits, labels)
        return {"loss": loss, "hard": loss.detach()}

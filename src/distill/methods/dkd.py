"""Decoupled knowledge distillation (Zhao et al. 2022, "Decoupled Knowledge Distillation").

Loss: `CE + w · (dkd_alpha · TCKD + dkd_beta · NCKD)`, where `w` ramps linearly from 0 to 1 over `warmup_steps`
training steps (the paper warms up over 20 epochs). Paper defaults: α = 1, β = 8, T = 4 (`distill.temperature`).
The target class is the label; for unlabelled rows (label -100) the teacher's top class stands in.
`standardize: true` applies logit standardisation (Sun et al. 2024) to both sides first.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..batch import forward_logits, inputs_of, labels_of
from ..losses import IGNORE_INDEX, dkd_parts, hard_loss, standardize_logits
from .base import Method, register_method


class DKDOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dkd_alpha: float = Field(default=1.0, ge=0)
    dkd_beta: float = Field(default=8.0, ge=0)
    warmup_steps: int = Field(default=0, ge=0)
    ce_weight: float = Field(default=1.0, ge=0)
    standardize: bool = False


@register_method("dkd")
class DKD(Method):
    Options = DKDOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # training steps seen, for the warm-up; a buffer so checkpoints save it and a resume continues the ramp
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        o = self.options
        student = forward_logits(self.student, inputs_of(batch))  # (B, C)
        teacher = self.teacher(batch)  # (B, C), detached
        labels = labels_of(batch)
        target = teacher.argmax(-1)  # (B,)
        if labels is not None:
            labels = labels.to(target.device).long()
            target = torch.where(labels == IGNORE_INDEX, target, labels)
        s, t = (standardize_logits(student), standardize_logits(teacher)) if o.standardize else (student, teacher)
        tckd, nckd = dkd_parts(s, t, target, temperature=self.temperature)
        if self.training:
            self.steps_seen += 1
        ramp = min(1.0, int(self.steps_seen) / o.warmup_steps) if o.warmup_steps else 1.0
        hard = hard_loss(student, labels)
        loss = o.ce_weight * hard + ramp * (o.dkd_alpha * tckd + o.dkd_beta * nckd)
        return {"loss": loss, "hard": hard.detach(), "tckd": tckd.detach(), "nckd": nckd.detach()}

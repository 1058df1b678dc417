"""Hinton et al. 2015 knowledge distillation: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE.

Option `sigmoid: true` treats the teacher as multi-label (per-class Bernoulli KD, `binary_kd_loss`); its hard term is
binary cross-entropy on multi-hot labels. Option `standardize: true` applies logit standardisation (Sun et al. 2024,
`standardize_logits`) to both sides before the temperature, in the soft term only.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict

from ..batch import forward_logits, inputs_of, labels_of
from ..errors import DistillError
from ..losses import binary_kd_loss, hard_loss, kd_loss, standardize_logits
from .base import Method, register_method


class KDOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sigmoid: bool = False
    standardize: bool = False


@register_method("kd")
class KD(Method):
    Options = KDOptions

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        student = forward_logits(self.student, inputs_of(batch))  # (B, C) or (B, T, V)
        teacher = self.teacher(batch)  # same shape, detached
        labels = labels_of(batch)
        if self.options.sigmoid:
            if self.options.standardize:
                raise DistillError("kd: standardize applies to softmax teachers; drop sigmoid or standardize")
            soft = binary_kd_loss(student, teacher, temperature=self.temperature)
            hard = (
                F.binary_cross_entropy_with_logits(student.float(), labels.float())
                if labels is not None
                else student.float().sum() * 0.0
            )
        else:
            if self.options.standardize:
                soft = kd_loss(standardize_logits(student), standardize_logits(teacher), temperature=self.temperature)
            else:
                soft = kd_loss(student, teacher, temperature=self.temperature)
            hard = hard_loss(student, labels)
        loss = self.alpha * soft + (1.0 - self.alpha) * hard
        return {"loss": loss, "soft": soft.detach(), "hard": hard.detach()}

"""Hinton et al. 2015 knowledge distillation: alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE.

Option `sigmoid: true` treats the teacher as multi-label: `alpha · binary_kd_loss + (1 − alpha) · binary_hard_loss`,
per-class Bernoulli KL at T (× T²) and binary cross-entropy on multi-hot labels `(B, C)`, *both summed over classes
and averaged over rows*, so alpha weighs terms of the same scale:
`alpha · T² · (1/B) Σ_b Σ_c KL(Bern(σ(t/T)) ‖ Bern(σ(s/T))) + (1 − alpha) · (1/B) Σ_b Σ_c BCE(σ(s), y)`.
Option `standardize: true` applies logit standardisation (Sun et al. 2024, `standardize_logits`: each row's logits
minus their mean, over their standard deviation) to both sides before the temperature, in the soft term only. It is
off by default (textbook Hinton KD). Turn it on when the teacher's targets are one-hot at your T — `distill check`
and the start of every run measure that and say so: on a pretrained MNIST teacher (logits around ±90) it turned a
−13-point loss into a +26-point gain (BENCHMARKS.md, "Which default does not lose"). With two classes it carries no
confidence at all (every row standardises to ±0.71), so leave it off there. Sigmoid teachers are never standardised.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, model_validator

from ..batch import forward_logits, inputs_of, labels_of, token_mask
from ..errors import DistillError
from ..losses import (
    binary_hard_loss,
    binary_kd_loss,
    hard_loss,
    kd_loss,
    standardize_logits,
)
from .base import Method, register_method


class KDOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sigmoid: bool = False
    standardize: bool = False

    @model_validator(mode="after")
    def _softmax_only(self) -> KDOptions:
        if self.sigmoid and self.standardize:
            raise ValueError("standardize applies to softmax teachers; drop sigmoid or standardize")
        return self


@register_method("kd")
class KD(Method):
    Options = KDOptions

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        student = forward_logits(self.student, inputs_of(batch))  # (B, C) or (B, T, V)
        teacher = self.teacher(batch)  # same shape, detached
        labels = labels_of(batch)
        mask = token_mask(batch, student)  # (B, T) real tokens of sequence logits; None for (B, C)
        if self.options.sigmoid:
            if labels is not None and labels.shape != student.shape:
                raise DistillError(
                    f"kd with sigmoid: true needs multi-hot labels shaped like the logits {tuple(student.shape)}, "
                    f"got {tuple(labels.shape)}; give (B, C) 0/1 labels or drop distill.options.sigmoid"
                )
            soft = binary_kd_loss(student, teacher, temperature=self.temperature, mask=mask)
            hard = binary_hard_loss(student, labels, mask=mask)
        else:
            if self.options.standardize:
                soft = kd_loss(standardize_logits(student), standardize_logits(teacher), temperature=self.temperature,
                               mask=mask)
            else:
                soft = kd_loss(student, teacher, temperature=self.temperature, mask=mask)
            hard = hard_loss(student, labels, mask=mask)
        loss = self.alpha * soft + (1.0 - self.alpha) * hard
        return {"loss": loss, "soft": soft.detach(), "hard": hard.detach()}

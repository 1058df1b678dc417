"""Born-again networks (Furlanello et al. 2018, "Born Again Neural Networks"): the teacher is a model of the
student's own architecture. Generation 1 learns from the student trained alone (the run's `scratch` phase);
generation k+1 learns from generation k; `generations` sets N, and the last generation is the run's student.
`from_teacher: true` starts the chain from the recipe's teacher instead. Each generation starts from the same initial
weights. Loss per generation: Hinton KD, `alpha · T² · KL + (1 − alpha) · CE` (optionally standardised logits).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..batch import forward_logits, inputs_of, labels_of
from ..losses import hard_loss, kd_loss, standardize_logits
from ..teachers import LiveTeacher
from .base import Method, register_method


class BornAgainOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    generations: int = Field(default=2, ge=1, le=10)
    from_teacher: bool = False
    standardize: bool = False


@register_method("born_again")
class BornAgain(Method):
    Options = BornAgainOptions
    runs_teacher_models = True

    @classmethod
    def generations(cls, options: dict[str, Any]) -> int:
        return cls.Options(**options).generations

    @classmethod
    def needs_scratch_student(cls, options: dict[str, Any]) -> bool:
        return not cls.Options(**options).from_teacher

    @classmethod
    def teacher_source(cls, models: dict[str, Any], options: dict[str, Any], temperature: float) -> LiveTeacher:
        first = cls.Options(**options).from_teacher and models.get("generation", 0) == 0
        return LiveTeacher(models["teacher"] if first else models["previous"])

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        student = forward_logits(self.student, inputs_of(batch))  # (B, C)
        teacher = self.teacher(batch)  # (B, C), detached: the previous generation
        labels = labels_of(batch)
        s, t = (standardize_logits(student), standardize_logits(teacher)) if self.options.standardize else (student, teacher)
        soft = kd_loss(s, t, temperature=self.temperature)
        hard = hard_loss(student, labels)
        return {"loss": self.alpha * soft + (1 - self.alpha) * hard, "soft": soft.detach(), "hard": hard.detach()}

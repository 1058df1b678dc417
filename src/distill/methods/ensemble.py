"""Ensemble-to-one distillation (Hinton et al. 2015): Hinton KD from the mean of several teachers' tempered
probabilities (`teachers.EnsembleTeacher`). The recipe's teacher is member 0; `distill.options.teachers` names the
others like the recipe's teacher section (`name`, `kwargs`, `weights`, `epochs`, `lr`); those without weights are
trained first, like the main teacher. `mix` optionally weights the members (default: equal).
Loss: `alpha · T² · KL(p_ensemble ‖ q) + (1 − alpha) · CE`.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..batch import forward_logits, inputs_of, labels_of
from ..config import TeacherConfig
from ..errors import DistillError
from ..losses import hard_loss, kd_loss
from ..teachers import EnsembleTeacher
from .base import Method, register_method


class EnsembleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    teachers: list[TeacherConfig] = Field(default_factory=list)
    mix: list[float] | None = None


@register_method("ensemble")
class Ensemble(Method):
    Options = EnsembleOptions
    runs_teacher_models = True
    multi_teacher = True

    @classmethod
    def extra_teachers(cls, options: dict[str, Any]) -> list[Any]:
        return list(cls.Options(**options).teachers)

    @classmethod
    def teacher_source(cls, models: dict[str, Any], options: dict[str, Any], temperature: float) -> EnsembleTeacher:
        members = [models["teacher"], *models.get("extra", [])]
        mix = cls.Options(**options).mix
        if mix is not None and len(mix) != len(members):
            raise DistillError(f"ensemble: mix has {len(mix)} weights for {len(members)} teachers; give one weight per teacher")
        return EnsembleTeacher(members, temperature=temperature, weights=mix)

    @classmethod
    def check(cls, student, teacher, example_batch, options, *, extra=()) -> None:  # noqa: ANN001
        o = cls.Options(**options)
        if o.mix is not None and len(o.mix) != 1 + len(extra):
            raise DistillError(
                f"ensemble: mix has {len(o.mix)} weights for {1 + len(extra)} teachers (the first teacher plus "
                "the others: distill.options.teachers in a recipe, the list in the Python API); give one weight each"
            )

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        t_ens = getattr(self.teacher, "temperature", self.temperature)
        if t_ens != self.temperature:  # the target is exact only at the temperature the ensemble averaged at
            raise DistillError(f"ensemble teacher averages at T={t_ens} but the method uses T={self.temperature}; use one T")
        student = forward_logits(self.student, inputs_of(batch))  # (B, C)
        teacher = self.teacher(batch)  # (B, C): T·log(mean tempered probabilities)
        labels = labels_of(batch)
        soft = kd_loss(student, teacher, temperature=self.temperature)
        hard = hard_loss(student, labels)
        return {"loss": self.alpha * soft + (1 - self.alpha) * hard, "soft": soft.detach(), "hard": hard.detach()}

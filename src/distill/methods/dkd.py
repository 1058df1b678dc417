"""Decoupled knowledge distillation (Zhao et al. 2022, "Decoupled Knowledge Distillation").

Loss: `ce_weight · CE + w_k · (dkd_alpha · TCKD + dkd_beta · NCKD)`, paper defaults α = 1, β = 8, T = 4
(`distill.temperature`; `distill.alpha` is not read: the weights live in `distill.options`).

Warm-up, as in the authors' code (linear over the first 20 of 240 epochs): over the first `warmup` fraction of the
phase's optimizer steps (default 20/240), `w_k = min(1, (k + 1) / W)` at update k = 0, 1, ... with
`W = max(1, round(warmup · total_steps))`; `warmup_steps` sets W directly instead. k counts optimizer updates, so a
step skipped for a non-finite loss or gradient does not advance the ramp (the training loop reports k and the total
through `on_step`). `warmup: 0` turns the warm-up off.

The target class is the label; for unlabelled rows (label -100) of `(B, C)` logits the teacher's top class stands in.
Sequence logits `(B, T, C)` are flattened to rows of positions; only real tokens count (`batch.token_mask`: the
batch's `attention_mask`, and with per-position labels, label != -100), in every term. `standardize: true` applies logit standardisation (Sun et al. 2024) to both sides first.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from ..batch import forward_logits, inputs_of, labels_of, token_mask
from ..errors import DistillError
from ..losses import IGNORE_INDEX, dkd_parts, hard_loss, standardize_logits
from .base import Method, register_method


class DKDOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dkd_alpha: float = Field(default=1.0, ge=0)
    dkd_beta: float = Field(default=8.0, ge=0)
    warmup: float = Field(default=20 / 240, ge=0, le=1)  # fraction of the phase's optimizer steps
    warmup_steps: int | None = Field(default=None, ge=0)  # absolute warm-up length; overrides `warmup`
    ce_weight: float = Field(default=1.0, ge=0)
    standardize: bool = False


@register_method("dkd")
class DKD(Method):
    Options = DKDOptions
    uses = frozenset({"temperature"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # optimizer updates done, for the warm-up; a buffer so checkpoints carry it (the loop also reports it)
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))
        self.total_steps: int | None = None

    def on_step(self, done: int, total: int) -> None:
        self.steps_seen.fill_(done)
        self.total_steps = total

    def warmup_length(self) -> int:
        """W, the number of updates over which the DKD weight ramps to 1 (0: no warm-up)."""
        o = self.options
        if o.warmup_steps is not None:
            return o.warmup_steps
        if o.warmup == 0:
            return 0
        if self.total_steps is None:
            raise DistillError(
                "dkd's warm-up is a fraction of the run, which is unknown outside the training loop; "
                "train with distill.engine.loop.fit (or Distiller), or set distill.options.warmup_steps"
            )
        return max(1, round(o.warmup * self.total_steps))

    def ramp(self) -> float:
        """The DKD weight `w_k = min(1, (k + 1) / W)` for the step about to run (k = `steps_seen`)."""
        length = self.warmup_length()
        return 1.0 if length == 0 else min(1.0, (int(self.steps_seen) + 1) / length)

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        o = self.options
        student = forward_logits(self.student, inputs_of(batch))  # (B, C) or (B, T, C)
        teacher = self.teacher(batch)  # same shape, detached
        labels = labels_of(batch)
        target = teacher.argmax(-1)  # (B,) or (B, T)
        mask = token_mask(batch, student)  # (B, T): real tokens with a label (if labelled); None for (B, C)
        if labels is not None:
            labels = labels.to(target.device).long()
            if labels.shape != target.shape:
                raise DistillError(
                    f"dkd: labels of shape {tuple(labels.shape)} do not match logits of shape {tuple(student.shape)}; "
                    "give one class index per row (or per position for sequence logits)"
                )
            target = torch.where(labels == IGNORE_INDEX, target, labels)
        s, t = (standardize_logits(student), standardize_logits(teacher)) if o.standardize else (student, teacher)
        tckd, nckd = dkd_parts(s, t, target, temperature=self.temperature, mask=mask)
        w = self.ramp() if self.training else 1.0
        if self.training:
            self.steps_seen += 1  # the loop resets it to the true update count before the next step
        hard = hard_loss(student, labels, mask=mask)
        loss = o.ce_weight * hard + w * (o.dkd_alpha * tckd + o.dkd_beta * nckd)
        return {"loss": loss, "hard": hard.detach(), "tckd": tckd.detach(), "nckd": nckd.detach(),
                "dkd_weight": torch.tensor(w, device=loss.device)}

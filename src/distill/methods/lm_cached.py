"""Offline LLM distillation: a causal-LM student trained from an LLM logit cache, with no teacher forward in training.

    loss = alpha · L_cache(teacher_T, student_T) + (1 − alpha) · CE(student, next tokens)

L_cache is the cache form's loss from `distill.losses.cached_lm`, already × T²: for a `topk` cache the KL over the k
cached ids plus one bucket for the leftover mass (`topk_kl_loss`), for a `sampled` cache the importance-weighted
cross-entropy against the teacher's samples (`sampled_ce_loss`, random-sampling KD: an unbiased estimate of
CE(teacher, student), so its gradient is forward KL's; the logged `soft` subtracts the cached teacher entropy to show
the KL estimate, divided by T² as `lm_kd` logs its divergence). The hard term and the weighting are `lm_kd`'s, so `lm_cached` on a cache is `lm_kd` with
`divergence: forward_kl` on the live teacher, up to what the cache keeps.

The cache is the run's teacher source: `distill cache RECIPE` builds it over the training split and `distill.cache`
names it (the `causal_lm` task kind opens it as an `LMCacheSource`, refusing one built with another teacher, tokenizer,
data or sampling temperature before anything is written). Alignment: the batch reaches `forward` through
`Method.prepare_batch`, which makes labels next-token targets — position t against token t + 1 — and cached entry t
is the teacher's prediction *at* position t (of token t + 1), so student `logits[:, t]`, the cached entry and the
label at t describe the same prediction; positions whose next token is a prompt token, padding or past the end never
count. Recipe: `recipes/smollm2-cached.yaml`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from ..batch import forward_logits, inputs_of, labels_of, token_mask
from ..errors import DistillError
from ..losses import chunked_cross_entropy, hard_loss
from .base import Method, register_method
from .lm_kd import check_vocabulary


class LMCachedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    chunk_size: int | Literal["auto"] | None = "auto"  # rows per chunk of the hard CE; None: one full-tensor CE


@register_method("lm_cached")
class LMCached(Method):
    Options = LMCachedOptions
    teacher_outputs = "lm-cache"
    models = "causal-lm"

    @classmethod
    def teacher_source(cls, models: dict[str, Any], options: dict[str, Any], temperature: float) -> Any:
        source = models.get("source")
        if getattr(source, "outputs", None) != "lm-cache":
            raise DistillError("method 'lm_cached' learns from an LLM logit cache: set distill.cache (built by "
                               "`distill cache RECIPE`), or in Python pass teacher=LMCacheSource(path)")
        return source

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        labels = labels_of(batch)  # next-token targets (prepare_batch), -100 = none
        student = forward_logits(self.student, inputs_of(batch))  # (B, T, V)
        mask = token_mask(batch, student)
        entries = self.teacher.entries(batch)  # (B, T, k) at the batch's positions, and their own `mask`
        soft, kl = self.teacher.loss(student, entries, temperature=self.temperature, mask=mask)
        chunk = self.options.chunk_size
        if self.alpha == 1.0:
            hard = student.float().sum() * 0.0
        elif chunk is None:
            hard = hard_loss(student, labels, mask=mask)
        else:
            hard = chunked_cross_entropy(student, labels, mask=mask, chunk_size=chunk)
        loss = self.alpha * soft + (1.0 - self.alpha) * hard
        # logged as lm_kd logs its soft term: the divergence itself, without the T² the loss carries
        return {"loss": loss, "soft": kl.detach() / self.temperature**2, "hard": hard.detach()}

    def prepare_batch(self, batch: Any) -> Any:
        """Always the next-token shift: a cache holds next-token predictions, so the student is scored as a causal LM
        even when it is a module of the user's that `batch.is_causal_lm` does not recognise."""
        self._causal = True
        return super().prepare_batch(batch)

    @classmethod
    def check(cls, student: nn.Module, teacher: nn.Module, example_batch: Any, options: dict[str, Any], *,
              extra: Any = ()) -> None:
        """One vocabulary (and tokenizer, when both models carry one), as `lm_kd` checks."""
        check_vocabulary(student, teacher, student_tokenizer=getattr(student, "distill_tokenizer", None),
                         teacher_tokenizer=getattr(teacher, "distill_tokenizer", None))

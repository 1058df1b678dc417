"""Sentence-embedding distillation and DistilBERT's triple loss, for Hugging Face encoders (`minilm-encoder`,
`minilm-classifier`, or any model whose output has `.logits`, `.hidden_states` under `output_hidden_states=True`,
and `.embedding` for the embedding term).

`embedding` (Reimers & Gurevych 2020): the student's mean-pooled sentence embedding regresses the teacher's,
`1 - cos` or MSE (`options.loss`), averaged over the batch's examples. Optionally (`hidden_weight > 0`) the per-token
hidden-state cosine of DistilBERT on the layers of `layer_map`, averaged over real tokens (`batch.feature_mask`).

`distilbert` (Sanh et al. 2019): the same terms with DistilBERT's defaults on: soft targets (Hinton KD at
`distill.temperature`, × T²) + the task loss (cross-entropy on the labels) + the per-token hidden-state cosine.

    loss = kd_weight · KD_T + ce_weight · CE + embedding_weight · L_emb + hidden_weight · mean_pairs L_tok

Every weight is a recipe option (`distill.options`). `layer_map`: `[[student, teacher], ...]` indices into
`hidden_states` (0 = the embedding layer's output, i = layer i's output); default: the uniform map of every student
layer j to teacher layer `j · L_t / L_s` (for 2 of 6 layers: 1→3, 2→6). Hidden sizes must match unless
`projector: true` (a trained linear map per pair, and one for the embedding). Both models read the same
`input_ids`, so their vocabularies must be the same.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..batch import attention_mask_of, feature_mask, inputs_of, labels_of, token_mask
from ..errors import DistillError
from ..losses import embedding_loss, hard_loss, kd_loss, token_cosine_loss
from ..pairing import teacher_model
from .base import Method, register_method


class EmbeddingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    loss: Literal["cosine", "mse"] = "cosine"
    embedding_weight: float = Field(default=1.0, ge=0)
    hidden_weight: float = Field(default=0.0, ge=0)
    kd_weight: float = Field(default=0.0, ge=0)
    ce_weight: float = Field(default=0.0, ge=0)
    layer_map: list[tuple[int, int]] | None = None
    projector: bool = False


class DistilBertOptions(EmbeddingOptions):
    embedding_weight: float = Field(default=0.0, ge=0)
    hidden_weight: float = Field(default=1.0, ge=0)
    kd_weight: float = Field(default=1.0, ge=0)
    ce_weight: float = Field(default=1.0, ge=0)


def _run(model: nn.Module, batch: Any, hidden: bool) -> Any:
    return model(**inputs_of(batch), output_hidden_states=hidden) if hidden else model(**inputs_of(batch))


def _layer_map(options: BaseModel, n_student: int, n_teacher: int) -> list[tuple[int, int]]:
    """Pairs of hidden-state indices; `n_*` count layers (hidden_states has n + 1 entries)."""
    if options.layer_map is not None:
        return [(int(s), int(t)) for s, t in options.layer_map]
    return [(j, round(j * n_teacher / n_student)) for j in range(1, n_student + 1)]


def _vocab(model: nn.Module) -> int | None:
    return getattr(getattr(model, "config", None), "vocab_size", None)


class _EmbeddingBase(Method):
    models = "hf-encoder"
    runs_teacher_models = True  # taps the teacher's hidden states: a live teacher model
    uses = frozenset({"temperature"})
    method_name = "embedding"

    def accumulation_note(self, batch: Any) -> str | None:
        if self.options.hidden_weight > 0 and attention_mask_of(batch) is not None:
            return "its hidden-state term averages over tokens while the micro-batches are weighted by examples"
        return super().accumulation_note(batch)

    @classmethod
    def check(cls, student: nn.Module, teacher: nn.Module, example_batch: Any, options: dict[str, Any], *,
              extra: Any = ()) -> None:
        o = cls.Options(**options)
        name = cls.method_name
        vs, vt = _vocab(student), _vocab(teacher)
        if vs is not None and vt is not None and vs != vt:
            raise DistillError(
                f"method {name!r} feeds student and teacher the same input_ids, but the student's vocabulary has {vs} "
                f"tokens and the teacher's {vt}; build the student from the teacher's config and tokenizer (e.g. "
                "kwargs.layers)")
        hidden = o.hidden_weight > 0
        with torch.no_grad():
            was = student.training, teacher.training
            student.eval(), teacher.eval()
            try:
                s, t = _run(student, example_batch, hidden), _run(teacher, example_batch, hidden)
            except TypeError as exc:
                raise DistillError(f"method {name!r} needs models that accept output_hidden_states ({exc}); use "
                                   "minilm-encoder / minilm-classifier or a Hugging Face model") from None
            finally:
                student.train(was[0]), teacher.train(was[1])
        if o.embedding_weight > 0:
            if getattr(s, "embedding", None) is None or getattr(t, "embedding", None) is None:
                raise DistillError(f"method {name!r} with embedding_weight > 0 needs models whose output has a pooled "
                                   ".embedding (minilm-encoder, minilm-classifier); set embedding_weight: 0")
            ds, dt = s.embedding.shape[-1], t.embedding.shape[-1]
            if ds != dt and not o.projector:
                raise DistillError(f"the student's embedding has {ds} dimensions and the teacher's {dt}; set "
                                   f"distill.options.projector: true to learn a {ds}->{dt} projection")
        if hidden:
            hs, ht = getattr(s, "hidden_states", None), getattr(t, "hidden_states", None)
            if not hs or not ht:
                raise DistillError(f"method {name!r} with hidden_weight > 0 needs hidden_states from both models "
                                   "(output_hidden_states=True); set hidden_weight: 0")
            ls, lt = len(hs) - 1, len(ht) - 1
            for i, j in _layer_map(o, ls, lt):
                if not 0 <= i <= ls:
                    raise DistillError(f"distill.options.layer_map names student layer {i} but the student has {ls} "
                                       f"layers (hidden states 0..{ls})")
                if not 0 <= j <= lt:
                    raise DistillError(f"distill.options.layer_map names teacher layer {j} but the teacher has {lt} "
                                       f"layers (hidden states 0..{lt})")
                if hs[i].shape[-1] != ht[j].shape[-1] and not o.projector:
                    raise DistillError(
                        f"student hidden size {hs[i].shape[-1]} differs from the teacher's {ht[j].shape[-1]} (layers "
                        f"{i}->{j}); set distill.options.projector: true to learn a projection")
        if o.kd_weight > 0 and s.logits.shape[-1] != t.logits.shape[-1]:
            raise DistillError(f"kd_weight > 0 needs logits of the same size (student {s.logits.shape[-1]}, teacher "
                               f"{t.logits.shape[-1]})")

    def setup(self, example_batch: Any, *, num_examples: int | None = None) -> None:
        """Projectors (when `projector: true` and sizes differ), sized on one example batch."""
        o, hidden = self.options, self.options.hidden_weight > 0
        teacher = teacher_model(self.teacher, self.method_name)
        with torch.no_grad():
            s, t = _run(self.student, example_batch, hidden), _run(teacher, example_batch, hidden)
        self.pairs = _layer_map(o, len(s.hidden_states) - 1, len(t.hidden_states) - 1) if hidden else []

        def proj(a: int, b: int) -> nn.Module:
            return nn.Linear(a, b) if a != b else nn.Identity()

        device = s.logits.device
        self.hidden_projectors = nn.ModuleList(
            proj(s.hidden_states[i].shape[-1], t.hidden_states[j].shape[-1]) for i, j in self.pairs).to(device)
        self.embedding_projector = (proj(s.embedding.shape[-1], t.embedding.shape[-1]) if o.embedding_weight > 0
                                    else nn.Identity()).to(device)

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        o, hidden = self.options, self.options.hidden_weight > 0
        s = _run(self.student, batch, hidden)
        teacher = teacher_model(self.teacher, self.method_name)
        teacher.eval()
        device = s.logits.device
        with torch.inference_mode(), torch.autocast(device_type=device.type, enabled=False):
            t = _run(teacher, batch, hidden)
        loss = s.logits.sum() * 0.0
        out: dict[str, torch.Tensor] = {}
        if o.embedding_weight > 0:
            emb = embedding_loss(self.embedding_projector(s.embedding), t.embedding.clone(), kind=o.loss)
            loss, out["embedding"] = loss + o.embedding_weight * emb, emb.detach()
        if hidden:
            per_pair = [token_cosine_loss(p(s.hidden_states[i]), t.hidden_states[j].clone(),
                                          mask=feature_mask(batch, t.hidden_states[j]))
                        for (i, j), p in zip(self.pairs, self.hidden_projectors)]
            h = torch.stack(per_pair).mean()
            loss, out["hidden"] = loss + o.hidden_weight * h, h.detach()
        mask = token_mask(batch, s.logits)
        if o.kd_weight > 0:
            soft = kd_loss(s.logits, t.logits.float().clone(), temperature=self.temperature, mask=mask)
            loss, out["soft"] = loss + o.kd_weight * soft, soft.detach()
        if o.ce_weight > 0:
            hard = hard_loss(s.logits, labels_of(batch), mask=mask)
            loss, out["hard"] = loss + o.ce_weight * hard, hard.detach()
        return {"loss": loss, **out}


@register_method("embedding")
class Embedding(_EmbeddingBase):
    __doc__ = __doc__
    Options = EmbeddingOptions
    method_name = "embedding"


@register_method("distilbert")
class DistilBert(_EmbeddingBase):
    __doc__ = __doc__
    Options = DistilBertOptions
    method_name = "distilbert"

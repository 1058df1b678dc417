"""Contrastive representation distillation (Tian et al. 2020, "Contrastive Representation Distillation").

Student and teacher embeddings (last stage, pooled to `(B, D)`) go through trainable linear heads to a shared
`embed_dim`-dimensional unit sphere. Two memory banks keep one momentum-averaged embedding per training example (they
need the batch's `index`); each example is contrasted with its own row of the other side's bank (positive) and with
`negatives` random rows (negatives), InfoNCE at temperature `nce_temperature`, both directions (`crd_loss`).
Banks grow to the largest index seen; heads and banks live on the method, never on the student.
Loss: `ce_weight·CE + kd_weight·KD + feature_weight·CRD` (paper: weight 0.8, dim 128, τ 0.07, momentum 0.5).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..batch import index_of
from ..errors import DistillError
from ..losses import as_vectors, crd_loss
from .base import Method, register_method
from ._features import FeatureOptions, _device_of, build_bridge, check_features, combine


class CRDOptions(FeatureOptions):
    feature_weight: float = Field(default=0.8, ge=0)
    embed_dim: int = Field(default=128, ge=1)
    negatives: int = Field(default=4096, ge=1)
    nce_temperature: float = Field(default=0.07, gt=0)
    momentum: float = Field(default=0.5, ge=0, lt=1)


@register_method("crd")
class CRD(Method):
    Options = CRDOptions
    runs_teacher_models = True
    method_name = "crd"
    pair_mode = "relation"
    pair_select = "last"

    @classmethod
    def check(cls, student, teacher, example_batch, options, *, extra=()) -> None:  # noqa: ANN001
        check_features(cls, student, teacher, example_batch, options)
        if index_of(example_batch) is None:
            raise DistillError("crd keeps a memory bank per training example and needs batches with an 'index' key")

    def setup(self, example_batch: Any) -> None:
        self.bridge = build_bridge(self, example_batch)
        pair, dim = self.bridge.pairs[0], self.options.embed_dim
        device = _device_of(example_batch)
        self.embed_s = nn.Linear(pair.student_shape[0] if len(pair.student_shape) != 2 else pair.student_shape[-1], dim)
        self.embed_t = nn.Linear(pair.teacher_shape[0] if len(pair.teacher_shape) != 2 else pair.teacher_shape[-1], dim)
        self.embed_s.to(device)
        self.embed_t.to(device)
        self.register_buffer("bank_s", torch.empty(0, dim, device=device))
        self.register_buffer("bank_t", torch.empty(0, dim, device=device))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        """The banks grow while training: take the checkpoint's size before loading (a resume starts with 0 rows)."""
        for name in ("bank_s", "bank_t"):
            saved = state_dict.get(prefix + name)
            current = getattr(self, name, None)
            if saved is not None and current is not None and saved.shape != current.shape:
                setattr(self, name, torch.empty_like(saved, device=current.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _grow(self, size: int) -> None:
        """Extend both banks to `size` rows of random unit vectors (CRD initialises its memory at random)."""
        old = self.bank_s.shape[0]
        if size <= old:
            return
        size = max(size, 2 * old)
        extra = F.normalize(torch.randn(2, size - old, self.options.embed_dim, device=self.bank_s.device), dim=-1)
        self.bank_s = torch.cat([self.bank_s, extra[0]])
        self.bank_t = torch.cat([self.bank_t, extra[1]])

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        index = index_of(batch)
        if index is None:
            raise DistillError("crd needs batches with an 'index' key (dataset position of each example)")
        f = self.bridge.run(self.student, self.teacher, batch)
        s = F.normalize(self.embed_s(as_vectors(f.student[0])), dim=1)  # (B, D)
        t = F.normalize(self.embed_t(as_vectors(f.teacher[0])), dim=1)  # (B, D)
        index = index.long().to(s.device)
        self._grow(int(index.max()) + 1)
        k = self.options.negatives
        negatives = torch.randint(0, self.bank_s.shape[0], (s.shape[0], k), device=s.device)  # (B, K)
        rows = torch.cat([index.unsqueeze(1), negatives], dim=1)  # (B, 1+K), column 0 = positive
        feature = crd_loss(s, t, self.bank_s[rows], self.bank_t[rows], temperature=self.options.nce_temperature)
        if self.training:
            with torch.no_grad():  # momentum update of the banks at this batch's rows
                m = self.options.momentum
                self.bank_s[index] = F.normalize(m * self.bank_s[index] + (1 - m) * s.detach(), dim=1)
                self.bank_t[index] = F.normalize(m * self.bank_t[index] + (1 - m) * t.detach(), dim=1)
        return combine(self, f, batch, feature)

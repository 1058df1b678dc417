"""Attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention"): match the normalised
spatial attention maps `mean_c |F|^p` of paired stages (channel counts may differ; no projector). Loss:
`ce_weight·CE + kd_weight·KD + feature_weight·mean_pairs AT` (default weight 1000, p = 2, as the paper's β/2 setting)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ..losses import attention_loss
from . import Method, register_method
from ._features import FeatureOptions, build_bridge, check_features, combine, mean_over_pairs


class AttentionOptions(FeatureOptions):
    feature_weight: float = Field(default=1000.0, ge=0)
    p: float = Field(default=2.0, gt=0)


@register_method("attention")
class Attention(Method):
    Options = AttentionOptions
    method_name = "attention"
    pair_mode = "attention"
    pair_select = "all"

    @classmethod
    def check(cls, student, teacher, example_batch, options) -> None:  # noqa: ANN001
        check_features(cls, student, teacher, example_batch, options)

    def setup(self, example_batch: Any) -> None:
        self.bridge = build_bridge(self, example_batch)

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        f = self.bridge.run(self.student, self.teacher, batch)
        p = self.options.p
        feature = mean_over_pairs([attention_loss(s, t, p=p) for s, t in zip(f.student, f.teacher)])
        return combine(self, f, batch, feature)

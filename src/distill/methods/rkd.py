"""Relational KD (Park et al. 2019, "Relational Knowledge Distillation"): match the distance and angle structure of a
batch of embeddings (the last stage, pooled to `(B, D)`; widths may differ, no projector). Loss:
`ce_weight·CE + kd_weight·KD + feature_weight·(distance_weight·D + angle_weight·A)`, paper weights 25 and 50."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ..losses import rkd_loss
from . import Method, register_method
from ._features import FeatureOptions, build_bridge, check_features, combine, mean_over_pairs


class RKDOptions(FeatureOptions):
    distance_weight: float = Field(default=25.0, ge=0)
    angle_weight: float = Field(default=50.0, ge=0)


@register_method("rkd")
class RKD(Method):
    Options = RKDOptions
    method_name = "rkd"
    pair_mode = "relation"
    pair_select = "last"

    @classmethod
    def check(cls, student, teacher, example_batch, options) -> None:  # noqa: ANN001
        check_features(cls, student, teacher, example_batch, options)

    def setup(self, example_batch: Any) -> None:
        self.bridge = build_bridge(self, example_batch)

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        f = self.bridge.run(self.student, self.teacher, batch)
        o = self.options
        feature = mean_over_pairs([
            rkd_loss(s, t, distance_weight=o.distance_weight, angle_weight=o.angle_weight)
            for s, t in zip(f.student, f.teacher)
        ])
        return combine(self, f, batch, feature)

"""Cosine hidden-state loss: `1 - cos` between each paired (projected) student stage and its teacher stage, every
example flattened to one vector — the hidden-state alignment term of DistilBERT (Sanh et al. 2019), here on any
auto-paired stages. Loss: `ce_weight·CE + kd_weight·KD + feature_weight·mean_pairs (1 - cos)` (default weight 1)."""

from __future__ import annotations

from typing import Any

import torch

from ..losses import cosine_loss
from . import Method, register_method
from ._features import FeatureOptions, build_bridge, check_features, combine, mean_over_pairs


@register_method("cosine")
class Cosine(Method):
    Options = FeatureOptions
    method_name = "cosine"
    pair_mode = "project"
    pair_select = "all"

    @classmethod
    def check(cls, student, teacher, example_batch, options) -> None:  # noqa: ANN001
        check_features(cls, student, teacher, example_batch, options)

    def setup(self, example_batch: Any) -> None:
        self.bridge = build_bridge(self, example_batch)

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        f = self.bridge.run(self.student, self.teacher, batch)
        feature = mean_over_pairs([cosine_loss(s, t) for s, t in zip(f.student, f.teacher)])
        return combine(self, f, batch, feature)

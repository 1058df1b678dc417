"""FitNets (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"): the student's stage output, through a trainable
1×1-conv/linear regressor, regresses the paired teacher stage's output (MSE). Auto-paired stages, or
`distill.options.pairs`. Loss: `ce_weight·CE + kd_weight·KD + feature_weight·mean_pairs hint` (default weight 100,
as in the mdistiller CIFAR-100 settings)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ..losses import hint_loss
from . import Method, register_method
from ._features import FeatureOptions, build_bridge, check_features, combine, mean_over_pairs


class FitNetOptions(FeatureOptions):
    feature_weight: float = Field(default=100.0, ge=0)


@register_method("fitnet")
class FitNet(Method):
    Options = FitNetOptions
    method_name = "fitnet"
    pair_mode = "project"
    pair_select = "all"

    @classmethod
    def check(cls, student, teacher, example_batch, options) -> None:  # noqa: ANN001
        check_features(cls, student, teacher, example_batch, options)

    def setup(self, example_batch: Any) -> None:
        self.bridge = build_bridge(self, example_batch)

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        f = self.bridge.run(self.student, self.teacher, batch)
        feature = mean_over_pairs([hint_loss(s, t) for s, t in zip(f.student, f.teacher)])
        return combine(self, f, batch, feature)

"""FitNets (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"): the student's stage output, through a trainable
1×1-conv/linear regressor, regresses the paired teacher stage's output (MSE). Auto-paired stages, or
`distill.options.pairs`. Loss: `ce_weight·CE + kd_weight·KD + feature_weight·mean_pairs hint` (default weight 100,
as in the mdistiller CIFAR-100 settings)."""

from __future__ import annotations

from pydantic import Field

from ..losses import hint_loss
from ._features import FeatureOptions, pairwise_method


class FitNetOptions(FeatureOptions):
    feature_weight: float = Field(default=100.0, ge=0)


FitNet = pairwise_method("fitnet", FitNetOptions, mode="project", select="all", doc=__doc__,
                         pair_loss=lambda s, t, o: hint_loss(s, t))

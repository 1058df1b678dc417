"""FitNets (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"): the student's stage output, through a trainable
1×1-conv/linear regressor, regresses the paired teacher stage's output. As in the paper, one hint: the student stage
nearest the middle of its trunk (the "guided layer") with the teacher stage of nearest depth (the "hint").

Per pair: `hint = mean_{elements} (r(F_s) − F_t)²` (MSE over batch and every feature element). Pairs are *summed*
(`distill.options.pairs` may name several; each then carries the full weight): loss =
`ce_weight·CE + kd_weight·KD + feature_weight · Σ_pairs hint`, default weight 100 per hint, as in the mdistiller
CIFAR-100 settings (single-stage training; the paper's separate hint pre-training stage is not run).
"""

from __future__ import annotations

from pydantic import Field

from ..losses import hint_loss
from ._features import FeatureOptions, pairwise_method


class FitNetOptions(FeatureOptions):
    feature_weight: float = Field(default=100.0, ge=0)


FitNet = pairwise_method("fitnet", FitNetOptions, mode="project", select="middle", reduction="sum", doc=__doc__,
                         pair_loss=lambda s, t, o, mask: hint_loss(s, t, mask=mask))

"""Relational KD (Park et al. 2019, "Relational Knowledge Distillation"): match the distance and angle structure of a
batch of embeddings (the last stage, pooled to `(B, D)`; widths may differ, no projector). Loss:
`ce_weight·CE + kd_weight·KD + feature_weight·(distance_weight·D + angle_weight·A)`, paper weights 25 and 50."""

from __future__ import annotations

from pydantic import Field

from ..losses import rkd_loss
from ._features import FeatureOptions, pairwise_method


class RKDOptions(FeatureOptions):
    distance_weight: float = Field(default=25.0, ge=0)
    angle_weight: float = Field(default=50.0, ge=0)


RKD = pairwise_method(
    "rkd", RKDOptions, mode="relation", select="last", reduction="mean", doc=__doc__,
    pair_loss=lambda s, t, o, mask: rkd_loss(s, t, distance_weight=o.distance_weight, angle_weight=o.angle_weight,
                                             mask=mask),
)

"""Attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention"): match the normalised
spatial attention maps `mean_c |F|^p` of paired stages (channel counts may differ; no projector). Loss:
`ce_weight·CE + kd_weight·KD + feature_weight·mean_pairs AT` (default weight 1000, p = 2, as the paper's β/2 setting)."""

from __future__ import annotations

from pydantic import Field

from ..losses import attention_loss
from ._features import FeatureOptions, pairwise_method


class AttentionOptions(FeatureOptions):
    feature_weight: float = Field(default=1000.0, ge=0)
    p: float = Field(default=2.0, gt=0)


Attention = pairwise_method("attention", AttentionOptions, mode="attention", select="all", doc=__doc__,
                            pair_loss=lambda s, t, o: attention_loss(s, t, p=o.p))

"""Probabilistic knowledge transfer (Passalis & Tefas 2018): match the conditional-probability distributions that a
cosine kernel induces over a batch of embeddings (the last stage, pooled to `(B, D)`; widths may differ). Loss:
`ce_weight·CE + kd_weight·KD + feature_weight·PKT`; default weight 30000 (RepDistiller's setting for this loss scale)."""

from __future__ import annotations

from pydantic import Field

from ..losses import pkt_loss
from ._features import FeatureOptions, pairwise_method


class PKTOptions(FeatureOptions):
    feature_weight: float = Field(default=30000.0, ge=0)


PKT = pairwise_method("pkt", PKTOptions, mode="relation", select="last", reduction="mean", doc=__doc__,
                      pair_loss=lambda s, t, o, mask: pkt_loss(s, t, mask=mask))

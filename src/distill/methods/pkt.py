"""Probabilistic knowledge transfer (Passalis & Tefas 2018): match the conditional-probability distributions that a
cosine kernel induces over a batch of embeddings (the last stage, pooled to `(B, D)`; widths may differ). Loss:
`ce_weight·CE + kd_weight·KD + feature_weight·PKT`; default weight 30000 (RepDistiller's setting for this loss scale)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from ..losses import pkt_loss
from . import Method, register_method
from ._features import FeatureOptions, build_bridge, check_features, combine, mean_over_pairs


class PKTOptions(FeatureOptions):
    feature_weight: float = Field(default=30000.0, ge=0)


@register_method("pkt")
class PKT(Method):
    Options = PKTOptions
    method_name = "pkt"
    pair_mode = "relation"
    pair_select = "last"

    @classmethod
    def check(cls, student, teacher, example_batch, options) -> None:  # noqa: ANN001
        check_features(cls, student, teacher, example_batch, options)

    def setup(self, example_batch: Any) -> None:
        self.bridge = build_bridge(self, example_batch)

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        f = self.bridge.run(self.student, self.teacher, batch)
        feature = mean_over_pairs([pkt_loss(s, t) for s, t in zip(f.student, f.teacher)])
        return combine(self, f, batch, feature)

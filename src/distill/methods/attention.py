"""Attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention"): match the normalised
spatial attention maps of paired stages (channel counts may differ; no projector; a larger map is average-pooled to
the smaller one's H×W).

Per pair j, with `a(F) = vec(mean_c |F_c|^p) / ‖vec(mean_c |F_c|^p)‖₂` `(B, H·W)`:
`AT_j = mean_{b, hw} (a(F_s^j) − a(F_t^j))²` — the authors' code (`(at(x) - at(y)).pow(2).mean()`); the paper writes
the same difference as an unsquared p-norm per example, but its published numbers come from this code.
Pairs are *summed*, as the paper sums over layer groups: loss =
`ce_weight·CE + kd_weight·KD + feature_weight · Σ_j AT_j`, with `feature_weight = β/2 = 500` (β = 1000) and p = 2,
the paper's setting — so each pair keeps weight 500 however many stages are paired (a mean would divide it by the
number of pairs).
"""

from __future__ import annotations

from pydantic import Field

from ..losses import attention_loss
from ._features import FeatureOptions, pairwise_method


class AttentionOptions(FeatureOptions):
    feature_weight: float = Field(default=500.0, ge=0)  # β/2 with the paper's β = 1000
    p: float = Field(default=2.0, gt=0)


Attention = pairwise_method("attention", AttentionOptions, mode="attention", select="all", reduction="sum",
                            doc=__doc__, pair_loss=lambda s, t, o, mask: attention_loss(s, t, p=o.p, mask=mask))

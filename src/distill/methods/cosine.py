"""Cosine hidden-state loss: `1 - cos` between each paired (projected) student stage and its teacher stage, every
example flattened to one vector — the hidden-state alignment term of DistilBERT (Sanh et al. 2019), here on any
auto-paired stages. Loss: `ce_weight·CE + kd_weight·KD + feature_weight·mean_pairs (1 - cos)` (default weight 1): the
pairs are *averaged*, so the weight is shared by all of them (DistilBERT aligns a single pair)."""

from __future__ import annotations

from ..losses import cosine_loss
from ._features import FeatureOptions, pairwise_method

Cosine = pairwise_method("cosine", FeatureOptions, mode="project", select="all", reduction="mean",
                         doc=__doc__,
                         pair_loss=lambda s, t, o, mask: cosine_loss(s, t, mask=mask))

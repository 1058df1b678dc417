"""Pure loss functions: `logits.py` (Hinton KD family, DKD, logit standardisation), `features.py` (hint, attention,
RKD, PKT, CRD, cosine), `embedding.py` (sentence embeddings, per-token hidden-state cosine), `sequence.py` (token-level
divergences for LM distillation, chunked over the vocabulary), `cached_lm.py` (against a
top-k or sampled LLM logit cache)."""

from .cached_lm import sampled_ce_loss, topk_kl_loss
from .embedding import embedding_loss, mean_pool, token_cosine_loss
from .features import (
    as_vectors,
    attention_loss,
    cosine_loss,
    crd_loss,
    hint_loss,
    pkt_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_loss,
)
from .logits import (
    IGNORE_INDEX,
    binary_hard_loss,
    binary_kd_loss,
    dkd_loss,
    dkd_parts,
    hard_loss,
    hinton_loss,
    kd_loss,
    standardize_logits,
)
from .sequence import (
    DIVERGENCES,
    chunked_cross_entropy,
    chunked_head_loss,
    divergence_rows,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    sequence_divergence,
    skew_kl,
    total_variation,
)

__all__ = [
    "IGNORE_INDEX", "as_vectors", "embedding_loss", "mean_pool", "token_cosine_loss", "attention_loss", "binary_hard_loss", "binary_kd_loss", "cosine_loss", "crd_loss", "dkd_loss",
    "dkd_parts", "hard_loss", "hinton_loss", "hint_loss", "kd_loss", "pkt_loss", "rkd_angle_loss",
    "rkd_distance_loss", "rkd_loss", "standardize_logits",
    "sampled_ce_loss", "topk_kl_loss",  # cached_lm.py
    # sequence.py
    "DIVERGENCES", "chunked_cross_entropy", "chunked_head_loss", "divergence_rows", "forward_kl", "generalized_jsd", "reverse_kl",
    "sequence_divergence", "skew_kl", "total_variation",
]

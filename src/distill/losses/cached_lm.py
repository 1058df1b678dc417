"""Losses against a *cached* LLM teacher (`distill.teachers.lm_cache`): pure functions, float32 math, no modules.

A dense teacher distribution over a 49k vocabulary costs ~100 kB per token; an offline cache keeps a sparse summary
per position instead, in one of two forms, and each form has its own loss:

- **top-k** (`topk_kl_loss`): the teacher's k largest log-probabilities, their token ids and the leftover mass
  `r = 1 - sum(top-k probs)`. The loss is the KL divergence between the teacher and the student *coarsened* to k + 1
  outcomes — the k cached tokens and one "everything else" bucket:

      KL_k+1 = sum_i p_i (log p_i - log q_i)  +  r (log r - log r_s),      r_s = 1 - sum_i q_i  (student's leftover)

  The leftover is kept explicitly, not dropped (renormalising the top k to sum to 1 inflates them by 1 / (1 - r) and
  tells the student to put *no* mass on the tail) and not spread over the tail (which invents a teacher shape that
  was never stored). KL_k+1 is zero iff the student matches the k cached probabilities and the total tail mass, and it
  never exceeds the full KL (data-processing inequality); it *is* a biased estimate of the full KL — it is blind to
  how the student spreads mass inside the tail. At T != 1 the tempered teacher needs its tail's shape, which was not
  stored: the tail is then modelled as uniform over the V - k other ids (documented approximation; exact at T = 1).
- **sampled** (`sampled_ce_loss`, random-sampling KD, Anshumann et al. 2025, "Sparse Logit Sampling: Accelerating
  Knowledge Distillation in LLMs"): per position, K tokens drawn with replacement from a proposal q (the teacher, or
  a tempered teacher), stored as distinct ids with importance weights `w_j = count_j / K * p(j) / q(j)`. Then for
  any student, `E[sum_j w_j * (-log s(j))] = sum_x p(x) * (-log s(x)) = CE(p, s)`: the weighted cross-entropy is an
  *unbiased* estimate of the cross-entropy against the full teacher (and its gradient is unbiased too). With the
  teacher itself as proposal the weights are just `count / K` and sum to 1. CE(p, s) = KL(p || s) + H(p), and H(p)
  does not depend on the student, so the gradient is that of forward KL; subtract the cached entropy to report KL.

Shapes: student logits `(..., V)` — `(B, T, V)` for a batch of sequences, already aligned with the cached positions
(position t's logits against position t's cached targets; the next-token shift is the caller's). Cached tensors
`(..., k)`; `mask` `(...)` bool, True = the position counts; losses average over kept positions and multiply by T^2
(Hinton et al. 2015), so the gradient's scale does not depend on T.
"""

from __future__ import annotations

import math

import torch

from .logits import mean_rows, plogp_ratio

__all__ = ["sampled_ce_loss", "topk_kl_loss", "topk_tempered_teacher"]


def _check(student_logits: torch.Tensor, ids: torch.Tensor, temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape[:-1] != ids.shape[:-1]:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and cached ids {tuple(ids.shape)} cover different positions"
        )


def topk_tempered_teacher(
    topk_logprobs: torch.Tensor, rest: torch.Tensor, vocab_size: int, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher over k + 1 outcomes at temperature T: `(log p_i (..., k), log r (...))`. At T = 1 these are the
    cached values (r clamped to [0, 1]); otherwise the tail is taken as uniform over the other V - k ids, each
    `r / (V - k)`, and the whole is re-softmaxed at T."""
    logp = topk_logprobs.float()
    r = rest.float().clamp(0.0, 1.0)
    log_r = torch.where(r > 0, r.clamp_min(1e-45).log(), torch.full_like(r, -math.inf))
    if temperature == 1.0:
        return logp, log_r
    k = logp.shape[-1]
    n_tail = vocab_size - k
    if n_tail <= 0:
        return torch.log_softmax(logp / temperature, -1), log_r
    # one tail id has log-prob log(r / n_tail); n_tail of them at temperature T weigh n_tail * exp(that / T)
    log_tail = (log_r - math.log(n_tail)) / temperature + math.log(n_tail)  # (...)
    joint = torch.cat([logp / temperature, log_tail.unsqueeze(-1)], -1)  # (..., k + 1)
    joint = torch.log_softmax(joint, -1)
    return joint[..., :k], joint[..., k]


def topk_kl_loss(
    student_logits: torch.Tensor,
    topk_logprobs: torch.Tensor,
    topk_ids: torch.Tensor,
    rest: torch.Tensor,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """`T^2 * mean_positions KL_{k+1}(teacher || student)` against a top-k cache (see the module docstring).

    Args: `student_logits (..., V)`; `topk_logprobs (..., k)` teacher log-probabilities at T = 1 (float16 in the
    cache, any float here); `topk_ids (..., k)` integer token ids, distinct per position; `rest (...)` leftover mass.
    Returns a float32 scalar; the gradient flows to the student only."""
    _check(student_logits, topk_ids, temperature)
    ids = topk_ids.long()
    z = student_logits.float() / temperature  # (..., V)
    lse = torch.logsumexp(z, -1)  # (...)
    log_q = z.gather(-1, ids) - lse.unsqueeze(-1)  # (..., k)
    with torch.no_grad():
        log_p, log_r = topk_tempered_teacher(topk_logprobs, rest, student_logits.shape[-1], temperature)
    if ids.shape[-1] >= z.shape[-1]:  # no tail left (k = V): the bucket is empty for both, whatever rounding left
        tail_term = torch.zeros_like(lse)  # in `rest` (and a logsumexp over nothing would give NaN gradients)
    else:
        tail_term = plogp_ratio(log_r, _student_log_rest(z, ids, lse, log_q))
    per_row = plogp_ratio(log_p, log_q).sum(-1) + tail_term
    return temperature**2 * mean_rows(per_row, mask)


FAST_REST = 0.05  # a student leftover above this is computed as 1 - (top-k mass): well conditioned in float32


def _student_log_rest(z: torch.Tensor, ids: torch.Tensor, lse: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """log of the student's mass outside the cached ids, `(...)`. Where it exceeds `FAST_REST` (most positions of a
    student that is not yet sure of itself) as `log(1 - sum_i q_i)` from the k gathered log-probs — no extra
    `(..., V)` pass, forward or backward; in float32 its error there is ~1e-6 absolute, < 3e-5 relative. Elsewhere (a peaked student,
    where 1 - sum would cancel) exactly, as the logsumexp of the other logits, on those positions only."""
    log_top = torch.logsumexp(log_q, -1)  # log of the student's top-k mass
    fast = log_top < math.log1p(-FAST_REST)
    # the unused branch gets a harmless input, so no NaN/inf gradient flows through torch.where
    log_rest = torch.log(-torch.expm1(torch.where(fast, log_top, torch.full_like(log_top, -1.0))))
    if bool(fast.all()):
        return log_rest
    if 2 * int(fast.sum()) < fast.numel():  # mostly peaked: the exact form on every position, no row gathering
        exact = torch.logsumexp(z.scatter(-1, ids, -math.inf), -1) - lse
        return torch.where(fast, log_rest, exact)
    slow = (~fast).reshape(-1).nonzero().squeeze(1)
    v, k = z.shape[-1], ids.shape[-1]
    tail = z.reshape(-1, v)[slow].scatter(-1, ids.reshape(-1, k)[slow], -math.inf)  # logits outside the cached ids
    exact = torch.logsumexp(tail, -1) - lse.reshape(-1)[slow]
    return log_rest.reshape(-1).index_put((slow,), exact).reshape(log_rest.shape)


def sampled_ce_loss(
    student_logits: torch.Tensor,
    sample_ids: torch.Tensor,
    sample_weights: torch.Tensor,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """`T^2 * mean_positions sum_j w_j * (-log softmax(student / T)[id_j])`: the random-sampling KD loss, an unbiased
    estimate of `T^2 * CE(teacher_T, student_T)` (see the module docstring).

    Args: `student_logits (..., V)`; `sample_ids (..., K)` integer ids; `sample_weights (..., K)` importance weights
    (0 on padding slots). The cache must have been drawn for the same temperature (its manifest records it).
    Returns a float32 scalar; the gradient flows to the student only."""
    _check(student_logits, sample_ids, temperature)
    log_s = torch.log_softmax(student_logits.float() / temperature, -1).gather(-1, sample_ids.long())  # (..., K)
    w = sample_weights.detach().float()
    per_row = -(w * torch.where(w != 0, log_s, torch.zeros_like(log_s))).sum(-1)
    return temperature**2 * mean_rows(per_row, mask)

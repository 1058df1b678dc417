"""How close an LLM logit cache is to the live teacher: per-position terms and their means over a cache
(`bench/lm_cache.py` reports them for SmolLM2; BENCHMARKS.md explains the figures)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .lm_cache import LMLogitCache


def fidelity_terms(
    live_logits: torch.Tensor, entry: dict[str, torch.Tensor], form: str, scorer_logits: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """Per-position comparison of a cached entry with the live teacher p, logits `(N, V)` at T = 1 (BENCHMARKS.md).

    For a scorer s (a student; the teacher itself when `scorer_logits` is None): `ce_live = -sum_x p(x) log s(x)`
    (the scorer's expected NLL of the teacher's next token), `kl_live = KL(p || s)`, and the cache's versions:
    - sampled: `ce_cached` = importance-weighted CE (unbiased), `kl_cached = ce_cached - cached entropy`;
    - top-k: `ce_cached` = CE against top-k with the leftover spread uniformly over the other ids,
      `ce_renormalised` = CE against the top k renormalised to 1 (the naive form), `kl_cached` = the k + 1-outcome KL
      that `topk_kl_loss` trains on; and teacher-only terms `kl_uniform_tail` = KL(p || top-k with a uniform tail),
      `kl_coarse` = KL over k + 1 outcomes between live and cached (float16 rounding only), `rest` = leftover mass."""
    log_p = torch.log_softmax(live_logits.float(), -1)  # (N, V)
    p = log_p.exp()
    log_s = log_p if scorer_logits is None else torch.log_softmax(scorer_logits.float(), -1)
    entropy = -(p * log_p).sum(-1)
    out = {"ce_live": -(p * log_s).sum(-1), "entropy_live": entropy}
    out["kl_live"] = out["ce_live"] - entropy
    ids = entry["ids"].long()
    if form == "sampled":
        out["ce_cached"] = -(entry["weights"].float() * log_s.gather(-1, ids)).sum(-1)
        out["entropy_cached"] = entry["entropy"].float()
        out["kl_cached"] = out["ce_cached"] - out["entropy_cached"]
        return out
    top = entry["logprobs"].float()  # (N, k)
    rest = entry["rest"].float().clamp(0, 1)  # (N,)
    p_top = top.exp()
    v, k = live_logits.shape[-1], ids.shape[-1]
    s_top = log_s.gather(-1, ids)
    s_tail_sum = log_s.scatter(-1, ids, 0.0).sum(-1)  # sum of log s over the V - k other ids
    out["ce_cached"] = -(p_top * s_top).sum(-1) - rest / max(v - k, 1) * s_tail_sum
    out["ce_renormalised"] = -(p_top * s_top).sum(-1) / p_top.sum(-1)
    log_r = torch.where(rest > 0, rest.clamp_min(1e-45).log(), -math.inf)
    coarse_cached = torch.cat([top, log_r.unsqueeze(-1)], -1)  # (N, k + 1)
    s_rest = log_s.scatter(-1, ids, -math.inf).logsumexp(-1)
    coarse_s = torch.cat([s_top, s_rest.unsqueeze(-1)], -1)
    out["kl_cached"] = _kl_rows(coarse_cached, coarse_s)
    recon = (rest / max(v - k, 1)).unsqueeze(-1).expand_as(log_p).clone().scatter(-1, ids, p_top)
    log_recon = (recon / recon.sum(-1, keepdim=True)).clamp_min(1e-30).log()
    out["kl_uniform_tail"] = _kl_rows(log_p, log_recon)
    live_rest = log_p.scatter(-1, ids, -math.inf).logsumexp(-1)
    # a leftover below float16's smallest subnormal was stored as 0: compare it as 2^-24, not as log 0
    coarse_stored = torch.cat([top, rest.clamp_min(2.0**-24).log().unsqueeze(-1)], -1)
    out["kl_coarse"] = _kl_rows(torch.cat([log_p.gather(-1, ids), live_rest.unsqueeze(-1)], -1), coarse_stored)
    out["rest"] = rest
    return out


def _kl_rows(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    a = log_a.exp()
    return torch.where(a > 0, a * (log_a - log_b), torch.zeros_like(a)).sum(-1)


def cache_fidelity(
    cache: LMLogitCache, live: Callable[[torch.Tensor], torch.Tensor],
    scorer: Callable[[torch.Tensor], torch.Tensor] | None = None,
    masks: Sequence[Sequence[bool]] | None = None,
) -> dict[str, float]:
    """Mean of `fidelity_terms` over every cached position, with `live(tokens (L,)) -> logits (L, V)` the teacher and
    `scorer` likewise a student (None: the teacher scores itself). Adds `ce_gap` = mean(ce_cached - ce_live) (the
    cache's NLL bias on this data), `kl_gap` = mean(kl_cached - kl_live) (the bias of the training loss's value), and
    `ce_abs_error` = mean |ce_cached - ce_live| per position. `masks` (one bool list per sequence) restricts the
    means to chosen positions, e.g. the answer tokens."""
    sums: dict[str, float] = {}
    n = 0
    for i in range(len(cache)):
        entry = cache.sequence(i)
        live_logits = live(entry["tokens"])
        terms = fidelity_terms(live_logits, entry, cache.form, None if scorer is None else scorer(entry["tokens"]))
        terms["ce_abs_error"] = (terms["ce_cached"] - terms["ce_live"]).abs()
        keep = torch.ones(len(entry["tokens"]), dtype=torch.bool) if masks is None else torch.tensor(masks[i], dtype=torch.bool)
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + float(value.double()[keep].sum())
        n += int(keep.sum())
    out = {key: value / max(n, 1) for key, value in sums.items()}
    out["ce_gap"] = out["ce_cached"] - out["ce_live"]
    out["kl_gap"] = out["kl_cached"] - out["kl_live"]
    if "ce_renormalised" in out:
        out["ce_gap_renormalised"] = out["ce_renormalised"] - out["ce_live"]
    out["positions"] = n
    return out

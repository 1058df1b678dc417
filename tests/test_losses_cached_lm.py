"""Losses against a cached LLM teacher, checked against numpy written from the definitions (not from the code)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.losses.cached_lm import sampled_ce_loss, topk_kl_loss

V, K = 11, 4


def _np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _topk(teacher: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    logp = _np_log_softmax(teacher)
    ids = np.argsort(-logp, -1)[..., :k]
    top = np.take_along_axis(logp, ids, -1)
    rest = 1.0 - np.exp(top).sum(-1)
    return top, ids, rest


def _np_coarse_kl(student: np.ndarray, top: np.ndarray, ids: np.ndarray, rest: np.ndarray, t: float) -> np.ndarray:
    """KL over k + 1 outcomes, per row, with the teacher's tail uniform over the V - k other ids at T != 1."""
    rows = []
    for s, lp, i, r in zip(student.reshape(-1, V), top.reshape(-1, top.shape[-1]), ids.reshape(-1, ids.shape[-1]),
                           rest.reshape(-1)):
        k = len(i)
        full = np.full(V, r / (V - k)) if V > k else np.zeros(V)
        full[i] = np.exp(lp)
        pt = full ** (1 / t) / (full ** (1 / t)).sum()
        p = np.append(pt[i], 1 - pt[i].sum())
        qs = np.exp(_np_log_softmax(s / t))
        q = np.append(qs[i], 1 - qs[i].sum())
        rows.append(sum(a * np.log(a / b) for a, b in zip(p, q) if a > 0))
    return np.array(rows).reshape(student.shape[:-1])


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_topk_kl_matches_numpy(t: float) -> None:
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(2, 3, V)) * 2, rng.normal(size=(2, 3, V)) * 2
    top, ids, rest = _topk(teacher, K)
    want = t**2 * _np_coarse_kl(student, top, ids, rest, t).mean()
    got = topk_kl_loss(torch.tensor(student), torch.tensor(top), torch.tensor(ids), torch.tensor(rest), temperature=t)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_topk_kl_invariants() -> None:
    rng = np.random.default_rng(1)
    teacher = rng.normal(size=(4, V)) * 3
    top, ids, rest = (torch.tensor(a) for a in _topk(teacher, K))
    z_t = torch.tensor(teacher)
    assert topk_kl_loss(z_t, top, ids, rest).item() == pytest.approx(0.0, abs=1e-6)  # KL(p || p) = 0
    # k = V: the coarse KL is the full KL
    s = torch.tensor(rng.normal(size=(4, V)))
    fa, fi, fr = (torch.tensor(a) for a in _topk(teacher, V))
    full = torch.nn.functional.kl_div(torch.log_softmax(s, -1), torch.log_softmax(z_t, -1), log_target=True,
                                      reduction="batchmean")
    assert topk_kl_loss(s, fa, fi, fr).item() == pytest.approx(full.item(), rel=1e-6)
    assert fr.abs().max() < 1e-12
    # never above the full KL (data processing inequality)
    assert topk_kl_loss(s, top, ids, rest).item() <= full.item() + 1e-9
    # a teacher whose tail really is uniform is reproduced exactly at any T: student == teacher gives 0
    uniform_tail = torch.tensor([[5.0, 3.0, 2.0, 1.0] + [0.0] * (V - K)])
    a, i, r = (torch.tensor(x) for x in _topk(uniform_tail.numpy(), K))
    assert topk_kl_loss(uniform_tail, a, i, r, temperature=3.0).item() == pytest.approx(0.0, abs=1e-5)


def test_topk_kl_mask_and_gradient_scale() -> None:
    rng = np.random.default_rng(2)
    teacher = rng.normal(size=(2, 5, V))
    top, ids, rest = (torch.tensor(a) for a in _topk(teacher, K))
    s = torch.tensor(rng.normal(size=(2, 5, V)), requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    loss = topk_kl_loss(s, top, ids, rest, mask=mask)
    loss.backward()
    assert s.grad[~mask].abs().max() == 0  # masked positions contribute nothing
    changed = s.detach().clone()
    changed[~mask] = 100.0
    assert topk_kl_loss(changed, top, ids, rest, mask=mask).item() == pytest.approx(loss.item(), rel=1e-9)
    kept = topk_kl_loss(s.detach()[mask], top[mask], ids[mask], rest[mask])
    assert kept.item() == pytest.approx(loss.item(), rel=1e-6)  # averaged over kept positions only (float32 math)


@pytest.mark.parametrize("peaked", [2, 4], ids=["few-peaked-rows", "mostly-peaked"])
def test_topk_kl_student_leftover_both_ways(peaked: int) -> None:
    """The student's leftover mass is 1 - (top-k mass) where that is > FAST_REST and the exact logsumexp of the other
    logits elsewhere (a peaked student; on those rows only, or on all when most are): both against numpy, with
    gradients equal to the exact formula's."""
    from distill.losses.cached_lm import FAST_REST

    rng = np.random.default_rng(5)
    teacher = rng.normal(size=(6, V)) * 2
    top, ids, rest = _topk(teacher, K)
    student = rng.normal(size=(6, V))
    student[np.arange(peaked), ids[:peaked, 0]] = [6.0, 10.0, 15.0, 9.0][:peaked]  # leftover ~1e-2 .. 1e-6
    q = np.exp(_np_log_softmax(student))
    left = 1 - np.take_along_axis(q, ids, -1).sum(-1)
    assert (left[:peaked] < FAST_REST).all() and (left[peaked:] > FAST_REST).all()  # both paths are taken
    want = _np_coarse_kl(student, top, ids, rest, 1.0)
    s = torch.tensor(student, dtype=torch.float32, requires_grad=True)
    got = topk_kl_loss(s, torch.tensor(top), torch.tensor(ids), torch.tensor(rest))
    assert got.item() == pytest.approx(want.mean(), rel=1e-5)
    got.backward()
    # the exact formula in float64 (the tail's logsumexp for every row)
    z = torch.tensor(student, requires_grad=True)
    lse = z.logsumexp(-1)
    log_q = z.gather(-1, torch.tensor(ids)) - lse.unsqueeze(-1)
    log_rs = z.scatter(-1, torch.tensor(ids), float("-inf")).logsumexp(-1) - lse
    p, r = np.exp(top), torch.tensor(rest)
    ref = ((torch.tensor(p) * (torch.tensor(top) - log_q)).sum(-1) + r * (r.log() - log_rs)).mean()
    ref.backward()
    assert ref.item() == pytest.approx(want.mean(), rel=1e-8)
    torch.testing.assert_close(s.grad.double(), z.grad, atol=1e-6, rtol=1e-4)
    assert torch.isfinite(s.grad).all()


def _np_weighted_ce(student: np.ndarray, sids: np.ndarray, w: np.ndarray, t: float) -> float:
    log_s = _np_log_softmax(student / t)
    return t**2 * float((-(w * np.take_along_axis(log_s, sids, -1)).sum(-1)).mean())


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_sampled_ce_matches_numpy(t: float) -> None:
    rng = np.random.default_rng(3)
    student = rng.normal(size=(2, 3, V))
    sids = rng.integers(0, V, size=(2, 3, 5))
    w = rng.random(size=(2, 3, 5))
    got = sampled_ce_loss(torch.tensor(student), torch.tensor(sids), torch.tensor(w), temperature=t)
    assert got.item() == pytest.approx(_np_weighted_ce(student, sids, w, t), rel=1e-6)


@pytest.mark.parametrize("proposal_power", [1.0, 0.5])
def test_sampled_ce_is_unbiased(proposal_power: float) -> None:
    """Importance-weighted samples from a proposal q average to CE(p, s) (numpy draws, many repeats)."""
    rng = np.random.default_rng(4)
    p = np.exp(_np_log_softmax(rng.normal(size=V) * 2))
    q = p**proposal_power / (p**proposal_power).sum()  # proposal: the teacher, or a flattened teacher
    student = rng.normal(size=V)
    exact = float(-(p * _np_log_softmax(student)).sum())
    n, draws = 8, 20000
    samples = rng.choice(V, size=(draws, n), p=q)  # (draws, n) with replacement
    w = (p / q)[samples] / n  # per-sample weights; repeated ids just add up
    est = sampled_ce_loss(torch.tensor(student).expand(draws, V), torch.tensor(samples), torch.tensor(w)).item()
    single = -(w * _np_log_softmax(student)[samples]).sum(-1)
    assert abs(est - exact) < 4 * single.std() / np.sqrt(draws) + 1e-9
    # the mask drops rows, and padded slots (weight 0) contribute nothing
    pad_ids = np.concatenate([samples[:5], np.zeros((5, 2), dtype=samples.dtype)], -1)
    pad_w = np.concatenate([w[:5], np.zeros((5, 2))], -1)
    a = sampled_ce_loss(torch.tensor(student).expand(5, V), torch.tensor(pad_ids), torch.tensor(pad_w))
    b = sampled_ce_loss(torch.tensor(student).expand(5, V), torch.tensor(samples[:5]), torch.tensor(w[:5]))
    assert a.item() == pytest.approx(b.item(), rel=1e-9)


def test_bad_temperature_and_shapes() -> None:
    s = torch.zeros(2, V)
    with pytest.raises(ValueError, match="temperature"):
        sampled_ce_loss(s, torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3), temperature=0)
    with pytest.raises(ValueError, match="different positions"):
        topk_kl_loss(s, torch.zeros(3, 2), torch.zeros(3, 2, dtype=torch.long), torch.zeros(3))


def test_topk_kl_with_every_token_cached_has_finite_gradients() -> None:
    """k = V leaves no tail: the leftover bucket is skipped, not a logsumexp over nothing (NaN gradient)."""
    rng = np.random.default_rng(2)
    teacher = rng.normal(size=(3, V)) * 2
    a, i, r = (torch.tensor(x) for x in _topk(teacher, V))
    s = torch.tensor(rng.normal(size=(3, V)), requires_grad=True)
    topk_kl_loss(s, a, i, r).backward()
    assert torch.isfinite(s.grad).all()

"""DKD and logit standardisation vs independent numpy computations, plus the paper's decomposition identity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.losses import dkd_loss, dkd_parts, kd_loss, standardize_logits

rng = np.random.default_rng(1)


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return (p * np.log(p / q)).sum(-1)


def numpy_dkd(s: np.ndarray, t: np.ndarray, y: np.ndarray, T: float) -> tuple[float, float]:
    ps, pt = softmax(s / T), softmax(t / T)
    rows = np.arange(len(y))
    bs = np.stack([ps[rows, y], 1 - ps[rows, y]], 1)
    bt = np.stack([pt[rows, y], 1 - pt[rows, y]], 1)
    keep = np.ones_like(s, dtype=bool)
    keep[rows, y] = False
    ns = softmax(s[keep].reshape(len(y), -1) / T)
    nt = softmax(t[keep].reshape(len(y), -1) / T)
    return T**2 * kl(bt, bs).mean(), T**2 * kl(nt, ns).mean()


def test_dkd_parts_match_numpy() -> None:
    s, te, y = rng.normal(size=(4, 5)) * 3, rng.normal(size=(4, 5)) * 3, np.array([0, 3, 4, 1])
    tckd, nckd = dkd_parts(torch.tensor(s, dtype=torch.float32), torch.tensor(te, dtype=torch.float32),
                           torch.tensor(y), temperature=2.0)
    want_t, want_n = numpy_dkd(s, te, y, 2.0)
    assert tckd.item() == pytest.approx(want_t, rel=1e-4)
    assert nckd.item() == pytest.approx(want_n, rel=1e-4)
    total = dkd_loss(torch.tensor(s, dtype=torch.float32), torch.tensor(te, dtype=torch.float32), torch.tensor(y),
                     temperature=2.0, alpha=0.5, beta=3.0)
    assert total.item() == pytest.approx(0.5 * want_t + 3.0 * want_n, rel=1e-4)


def test_kd_decomposes_into_tckd_and_weighted_nckd() -> None:
    """Zhao et al. 2022, eq. (1): KD = TCKD + (1 - p_t^target) NCKD, per example."""
    s, te = torch.randn(1, 6) * 2, torch.randn(1, 6) * 2
    y = torch.tensor([2])
    tckd, nckd = dkd_parts(s, te, y, temperature=3.0)
    pt_target = torch.softmax(te / 3.0, -1)[0, 2]
    assert kd_loss(s, te, temperature=3.0).item() == pytest.approx((tckd + (1 - pt_target) * nckd).item(), rel=1e-4)


def test_dkd_is_zero_for_identical_logits_and_has_finite_gradients() -> None:
    z = torch.randn(3, 4, requires_grad=True)
    tckd, nckd = dkd_parts(z, z.detach(), torch.tensor([0, 1, 3]), temperature=4.0)
    assert tckd.item() == pytest.approx(0.0, abs=1e-6) and nckd.item() == pytest.approx(0.0, abs=1e-6)
    (tckd + nckd + dkd_loss(z * 2, z.detach(), torch.tensor([0, 1, 3]))).backward()
    assert torch.isfinite(z.grad).all()


def test_standardize_matches_numpy_and_removes_shift_and_scale() -> None:
    z = rng.normal(size=(3, 5))
    want = (z - z.mean(-1, keepdims=True)) / (z.std(-1, ddof=1, keepdims=True) + 1e-7)
    got = standardize_logits(torch.tensor(z, dtype=torch.float32))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    zt = torch.tensor(z, dtype=torch.float32)
    torch.testing.assert_close(standardize_logits(4 * zt + 7), standardize_logits(zt), rtol=1e-4, atol=1e-5)
    # a student that matches the teacher up to scale and shift has zero standardised KD
    assert kd_loss(standardize_logits(3 * zt - 1), standardize_logits(zt), temperature=2.0).item() == pytest.approx(0, abs=1e-6)

"""Logit losses against values worked out independently in numpy, plus their invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distill.losses import IGNORE_INDEX, binary_kd_loss, hard_loss, hinton_loss, kd_loss

RNG = np.random.default_rng(0)


def np_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def np_kd(s: np.ndarray, t: np.ndarray, T: float) -> float:
    p, q = np_softmax(t / T), np_softmax(s / T)
    kl_rows = (p * (np.log(p) - np.log(q))).sum(-1)  # summed over classes
    return T * T * kl_rows.mean()  # averaged over rows


def np_ce(s: np.ndarray, y: np.ndarray) -> float:
    keep = y != IGNORE_INDEX
    q = np_softmax(s[keep])
    return float(-np.log(q[np.arange(keep.sum()), y[keep]]).mean()) if keep.any() else 0.0


def np_sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def np_binary_kd(s: np.ndarray, t: np.ndarray, T: float) -> float:
    p, q = np_sigmoid(t / T), np_sigmoid(s / T)
    kl = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
    return T * T * kl.sum(-1).mean()


def tensors(*arrays: np.ndarray) -> list[torch.Tensor]:
    return [torch.tensor(a, dtype=torch.float64).float() for a in arrays]


def test_kd_hand_worked_two_classes() -> None:
    # One row, two classes, T = 1: teacher logits (0, 0) -> p = (0.5, 0.5); student (ln 3, 0) -> q = (0.75, 0.25).
    # KL(p||q) = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = 0.5 ln(4/3) ~= 0.143841.
    s = torch.tensor([[np.log(3.0), 0.0]])
    t = torch.tensor([[0.0, 0.0]])
    assert kd_loss(s, t, temperature=1.0).item() == pytest.approx(0.5 * np.log(4 / 3), abs=1e-6)
    # T = 2 rescales logits by 1/2 and multiplies by 4.
    q = np_softmax(np.array([np.log(3.0) / 2, 0.0]))
    expected = 4 * (0.5 * np.log(0.5 / q[0]) + 0.5 * np.log(0.5 / q[1]))
    assert kd_loss(s, t, temperature=2.0).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 8.0])
def test_kd_matches_numpy(T: float) -> None:
    s, t = RNG.normal(size=(5, 7)) * 3, RNG.normal(size=(5, 7)) * 3
    got = kd_loss(*tensors(s, t), temperature=T).item()
    assert got == pytest.approx(np_kd(s, t, T), rel=1e-5)


def test_kd_is_batchmean_not_mean_over_classes() -> None:
    s, t = RNG.normal(size=(4, 10)), RNG.normal(size=(4, 10))
    got = kd_loss(*tensors(s, t)).item()
    assert got == pytest.approx(np_kd(s, t, 1.0), rel=1e-5)
    assert got != pytest.approx(np_kd(s, t, 1.0) / 10, rel=1e-3)  # what reduction="mean" would give


def test_kd_direction_teacher_is_target() -> None:
    s, t = RNG.normal(size=(3, 5)) * 2, RNG.normal(size=(3, 5)) * 2
    forward = kd_loss(*tensors(s, t)).item()
    reverse = kd_loss(*tensors(t, s)).item()
    assert forward == pytest.approx(np_kd(s, t, 1.0), rel=1e-5)
    assert abs(forward - reverse) > 1e-3  # KL is asymmetric: swapping would be a silent bug


def test_kd_invariants() -> None:
    z = torch.randn(6, 4)
    assert kd_loss(z, z.clone(), temperature=3.0).item() == pytest.approx(0.0, abs=1e-6)
    for _ in range(20):
        s, t = torch.randn(3, 5) * 4, torch.randn(3, 5) * 4
        assert kd_loss(s, t, temperature=2.0).item() >= 0.0
    # invariant to adding a constant to a row's logits (softmax shift invariance)
    s, t = torch.randn(3, 5), torch.randn(3, 5)
    assert kd_loss(s + 7.0, t - 3.0).item() == pytest.approx(kd_loss(s, t).item(), abs=1e-5)


def test_kd_gradient_reaches_only_student_and_matches_closed_form() -> None:
    s = torch.randn(4, 6, requires_grad=True)
    t = torch.randn(4, 6, requires_grad=True)
    T = 3.0
    kd_loss(s, t, temperature=T).backward()
    assert t.grad is None
    # d/ds of T^2 * mean_rows KL = T^2 * (q - p) / (T * B) = T * (q - p) / B
    p, q = F.softmax(t.detach() / T, -1), F.softmax(s.detach() / T, -1)
    assert torch.allclose(s.grad, T * (q - p) / 4, atol=1e-6)


def test_kd_soft_gradient_scale_is_temperature_independent_at_high_T() -> None:
    # With T^2, the gradient tends to (s - t)/(C B) (zero-mean logits) instead of vanishing like 1/T^2.
    torch.manual_seed(0)
    s = torch.randn(8, 5)
    s = s - s.mean(-1, keepdim=True)
    t = torch.randn(8, 5)
    t = t - t.mean(-1, keepdim=True)
    norms = []
    for T in (20.0, 40.0, 80.0):
        x = s.clone().requires_grad_(True)
        kd_loss(x, t, temperature=T).backward()
        norms.append(x.grad.norm().item())
    limit = ((s - t) / (5 * 8)).norm().item()
    assert norms == pytest.approx([limit] * 3, rel=0.05)


def test_kd_mask_ignores_rows() -> None:
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    mask = torch.tensor([True, False, True, False])
    garbage = s.clone()
    garbage[~mask] = 1e4
    assert kd_loss(garbage, t, mask=mask).item() == pytest.approx(kd_loss(s[mask], t[mask]).item(), rel=1e-5)


def test_kd_sequence_logits_and_low_precision_inputs() -> None:
    s, t = torch.randn(2, 3, 11), torch.randn(2, 3, 11)  # (B, T, V)
    flat = kd_loss(s.reshape(6, 11), t.reshape(6, 11), temperature=2.0)
    assert kd_loss(s, t, temperature=2.0).item() == pytest.approx(flat.item(), rel=1e-6)
    out = kd_loss(s.bfloat16(), t.bfloat16(), temperature=2.0)
    assert out.dtype == torch.float32


def test_kd_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), temperature=0.0)
    with pytest.raises(ValueError, match="shape"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="alpha"):
        hinton_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), temperature=1.0, alpha=1.5)


@pytest.mark.parametrize("T,alpha", [(1.0, 0.5), (4.0, 0.9), (2.0, 0.0), (8.0, 1.0)])
def test_hinton_matches_numpy(T: float, alpha: float) -> None:
    s, t = RNG.normal(size=(6, 5)) * 2, RNG.normal(size=(6, 5)) * 2
    y = np.array([0, 1, 2, 3, 4, 0])
    got = hinton_loss(*tensors(s, t), torch.tensor(y), temperature=T, alpha=alpha).item()
    assert got == pytest.approx(alpha * np_kd(s, t, T) + (1 - alpha) * np_ce(s, y), rel=1e-5)


def test_hinton_hard_term_uses_untempered_student() -> None:
    s, t = RNG.normal(size=(3, 4)) * 3, RNG.normal(size=(3, 4))
    y = np.array([1, 2, 3])
    got = hinton_loss(*tensors(s, t), torch.tensor(y), temperature=5.0, alpha=0.0).item()
    assert got == pytest.approx(np_ce(s, y), rel=1e-5)
    assert got != pytest.approx(np_ce(s / 5.0, y), rel=1e-3)


def test_hinton_unlabelled_rows_get_only_soft_term() -> None:
    s, t = RNG.normal(size=(4, 3)), RNG.normal(size=(4, 3))
    y = np.array([0, IGNORE_INDEX, 2, IGNORE_INDEX])
    got = hinton_loss(*tensors(s, t), torch.tensor(y), temperature=2.0, alpha=0.3).item()
    # soft term over all 4 rows, hard term averaged over the 2 labelled rows only
    assert got == pytest.approx(0.3 * np_kd(s, t, 2.0) + 0.7 * np_ce(s, y), rel=1e-5)
    none = torch.full((4,), IGNORE_INDEX)
    only_soft = hinton_loss(*tensors(s, t), none, temperature=2.0, alpha=0.3).item()
    assert only_soft == pytest.approx(0.3 * np_kd(s, t, 2.0), rel=1e-5)
    assert hard_loss(torch.randn(2, 3, requires_grad=True), torch.full((2,), IGNORE_INDEX)).item() == 0.0


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_binary_kd_matches_numpy(T: float) -> None:
    s, t = RNG.normal(size=(5, 4)) * 2, RNG.normal(size=(5, 4)) * 2
    assert binary_kd_loss(*tensors(s, t), temperature=T).item() == pytest.approx(np_binary_kd(s, t, T), rel=1e-5)


def test_binary_kd_invariants_and_stability() -> None:
    z = torch.randn(3, 6)
    assert binary_kd_loss(z, z.clone(), temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)
    big = torch.tensor([[60.0, -60.0]])
    assert torch.isfinite(binary_kd_loss(big, -big))
    assert binary_kd_loss(torch.randn(4, 3), torch.randn(4, 3)).item() >= 0
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 4, requires_grad=True)
    binary_kd_loss(s, t, temperature=2.0).backward()
    assert t.grad is None and s.grad is not None
    mask = torch.tensor([True, False, True])
    assert binary_kd_loss(s, t, mask=mask).item() == pytest.approx(binary_kd_loss(s[mask], t[mask]).item(), rel=1e-5)

"""Feature losses vs independent numpy computations on small tensors, plus invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.losses import (
    attention_loss,
    cosine_loss,
    crd_loss,
    hint_loss,
    pkt_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_loss,
)

rng = np.random.default_rng(0)


def t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float32)


def huber(a: np.ndarray, b: np.ndarray) -> float:
    d = np.abs(a - b)
    return float(np.where(d < 1, 0.5 * d**2, d - 0.5).mean())


def test_hint_is_mse() -> None:
    s, te = rng.normal(size=(3, 4, 2, 2)), rng.normal(size=(3, 4, 2, 2))
    assert hint_loss(t(s), t(te)).item() == pytest.approx(((s - te) ** 2).mean(), rel=1e-5)
    with pytest.raises(ValueError, match="project"):
        hint_loss(t(s), t(te[:, :2]))


def test_attention_matches_numpy_and_ignores_channels() -> None:
    s, te = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 5, 4, 4))

    def amap(f: np.ndarray) -> np.ndarray:
        a = (np.abs(f) ** 2).mean(1).reshape(f.shape[0], -1)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    want = ((amap(s) - amap(te)) ** 2).mean()
    assert attention_loss(t(s), t(te)).item() == pytest.approx(want, rel=1e-5)
    assert attention_loss(t(s), t(s)).item() == pytest.approx(0.0, abs=1e-8)
    # a larger teacher map is pooled to the student's size
    assert torch.isfinite(attention_loss(t(s), t(rng.normal(size=(2, 5, 8, 8)))))


def test_rkd_terms_match_numpy() -> None:
    s, te = rng.normal(size=(5, 3)), rng.normal(size=(5, 7))

    def dist(x: np.ndarray) -> np.ndarray:
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return d / d[~np.eye(len(x), dtype=bool)].mean()

    def angle(x: np.ndarray) -> np.ndarray:
        e = x[None, :, :] - x[:, None, :]  # e[j, i] = x_i - x_j
        n = np.linalg.norm(e, axis=-1, keepdims=True)
        e = e / np.maximum(n, 1e-12)
        return np.einsum("jid,jkd->jik", e, e).reshape(-1)

    assert rkd_distance_loss(t(s), t(te)).item() == pytest.approx(huber(dist(s), dist(te)), rel=1e-4)
    assert rkd_angle_loss(t(s), t(te)).item() == pytest.approx(huber(angle(s), angle(te)), rel=1e-4)
    both = rkd_loss(t(s), t(te), distance_weight=2.0, angle_weight=3.0).item()
    assert both == pytest.approx(2 * huber(dist(s), dist(te)) + 3 * huber(angle(s), angle(te)), rel=1e-4)


def test_rkd_invariant_to_scale_and_translation() -> None:
    s, te = t(rng.normal(size=(6, 4))), t(rng.normal(size=(6, 4)))
    base = rkd_loss(s, te).item()
    assert rkd_loss(3.0 * s + 1.5, te).item() == pytest.approx(base, rel=1e-4)
    assert rkd_loss(te * 2.0, te).item() == pytest.approx(0.0, abs=1e-5)


def test_pkt_matches_numpy_and_is_scale_invariant() -> None:
    s, te = rng.normal(size=(4, 3)), rng.normal(size=(4, 6))

    def cond(x: np.ndarray) -> np.ndarray:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        k = (x @ x.T + 1) / 2
        return k / k.sum(1, keepdims=True)

    ps, pt = cond(s), cond(te)
    want = (pt * np.log((pt + 1e-7) / (ps + 1e-7))).mean()
    assert pkt_loss(t(s), t(te)).item() == pytest.approx(want, rel=1e-4)
    assert pkt_loss(t(s) * 5, t(te)).item() == pytest.approx(want, rel=1e-4)
    assert pkt_loss(t(s), t(s)).item() == pytest.approx(0.0, abs=1e-7)


def test_cosine_matches_numpy() -> None:
    s, te = rng.normal(size=(3, 2, 2, 2)), rng.normal(size=(3, 2, 2, 2))
    a, b = s.reshape(3, -1), te.reshape(3, -1)
    want = (1 - (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).mean()
    assert cosine_loss(t(s), t(te)).item() == pytest.approx(want, rel=1e-5)
    assert cosine_loss(t(s), t(s) * 4).item() == pytest.approx(0.0, abs=1e-6)


def test_crd_matches_numpy_infonce() -> None:
    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    s, te = unit(rng.normal(size=(2, 3))), unit(rng.normal(size=(2, 3)))
    bank_s, bank_t = unit(rng.normal(size=(2, 4, 3))), unit(rng.normal(size=(2, 4, 3)))

    def nce(anchor: np.ndarray, bank: np.ndarray) -> float:
        z = np.einsum("bkd,bd->bk", bank, anchor) / 0.1
        return float((np.log(np.exp(z).sum(1)) - z[:, 0]).mean())

    want = nce(s, bank_t) + nce(te, bank_s)
    got = crd_loss(t(s), t(te), t(bank_s), t(bank_t), temperature=0.1).item()
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("loss", [hint_loss, cosine_loss, pkt_loss, rkd_loss, attention_loss])
def test_gradient_reaches_only_the_student(loss) -> None:  # noqa: ANN001
    s = torch.randn(4, 3, 2, 2, requires_grad=True)
    te = torch.randn(4, 3, 2, 2, requires_grad=True)
    loss(s, te).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    assert te.grad is None

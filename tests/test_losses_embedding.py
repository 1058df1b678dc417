"""Sentence-embedding losses against values computed independently in numpy, plus invariants: identical inputs give
0, masked positions and examples contribute nothing (and get no gradient), padding a batch changes nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.losses import embedding_loss, mean_pool, token_cosine_loss


def _np_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture
def seq():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(3, 5, 4)), rng.normal(size=(3, 5, 4))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=bool)
    return s, t, mask


def test_mean_pool_is_the_mean_over_real_tokens(seq):
    s, _, mask = seq
    expected = np.stack([s[b][mask[b]].mean(0) for b in range(3)])
    got = mean_pool(torch.tensor(s), torch.tensor(mask))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(mean_pool(torch.tensor(s)).numpy(), s.mean(1), rtol=1e-12)


def test_mean_pool_ignores_padding_values(seq):
    s, _, mask = seq
    changed = s.copy()
    changed[~mask] = 1e6
    np.testing.assert_allclose(mean_pool(torch.tensor(changed), torch.tensor(mask)).numpy(),
                               mean_pool(torch.tensor(s), torch.tensor(mask)).numpy(), rtol=1e-12)


def test_embedding_cosine_and_mse_match_numpy():
    rng = np.random.default_rng(1)
    s, t = rng.normal(size=(6, 8)), rng.normal(size=(6, 8))
    cos = float(embedding_loss(torch.tensor(s), torch.tensor(t), kind="cosine"))
    assert cos == pytest.approx(float(np.mean(1 - _np_cos(s, t))), rel=1e-6)
    mse = float(embedding_loss(torch.tensor(s), torch.tensor(t), kind="mse"))
    assert mse == pytest.approx(float(np.mean((s - t) ** 2)), rel=1e-6)
    keep = np.array([1, 0, 1, 1, 0, 1], dtype=bool)
    masked = float(embedding_loss(torch.tensor(s), torch.tensor(t), kind="cosine", mask=torch.tensor(keep)))
    assert masked == pytest.approx(float(np.mean(1 - _np_cos(s[keep], t[keep]))), rel=1e-6)


def test_embedding_loss_is_zero_on_the_teacher_and_scale_free_for_cosine():
    t = torch.randn(4, 8)
    assert float(embedding_loss(t.clone(), t, kind="cosine")) == pytest.approx(0.0, abs=1e-6)
    assert float(embedding_loss(t.clone(), t, kind="mse")) == 0.0
    assert float(embedding_loss(3.0 * t, t, kind="cosine")) == pytest.approx(0.0, abs=1e-6)
    assert float(embedding_loss(3.0 * t, t, kind="mse")) > 0  # MSE sees the scale


def test_embedding_loss_gradient_reaches_only_the_student():
    s = torch.randn(4, 8, requires_grad=True)
    t = torch.randn(4, 8, requires_grad=True)
    embedding_loss(s, t, kind="mse").backward()
    assert s.grad is not None and t.grad is None
    # d/ds mean_b mean_d (s - t)^2 = 2 (s - t) / (B D)
    np.testing.assert_allclose(s.grad.numpy(), (2 * (s - t) / 32).detach().numpy(), rtol=1e-5)


def test_token_cosine_is_the_mean_over_real_tokens_not_examples(seq):
    s, t, mask = seq
    per_token = 1 - _np_cos(s, t)  # (B, T)
    expected = per_token[mask].mean()  # 8 real tokens: the 5-token row weighs 5/8, not 1/3
    got = float(token_cosine_loss(torch.tensor(s), torch.tensor(t), mask=torch.tensor(mask)))
    assert got == pytest.approx(float(expected), rel=1e-6)
    per_example = np.mean([per_token[b][mask[b]].mean() for b in range(3)])
    assert abs(got - per_example) > 1e-3  # the two reductions differ on this batch, so the test can tell
    assert float(token_cosine_loss(torch.tensor(s), torch.tensor(t))) == pytest.approx(float(per_token.mean()), rel=1e-6)


def test_token_cosine_padding_invariance(seq):
    s, t, mask = seq
    s_t = torch.tensor(s, requires_grad=True)
    base = token_cosine_loss(s_t, torch.tensor(t), mask=torch.tensor(mask))
    base.backward()
    padded_s = torch.cat([torch.tensor(s), torch.randn(3, 5, 4, dtype=torch.float64)], 1).requires_grad_(True)
    padded_t = torch.cat([torch.tensor(t), torch.randn(3, 5, 4, dtype=torch.float64)], 1)
    padded_mask = torch.cat([torch.tensor(mask), torch.zeros(3, 5, dtype=torch.bool)], 1)
    padded = token_cosine_loss(padded_s, padded_t, mask=padded_mask)
    padded.backward()
    assert float(padded) == pytest.approx(float(base), abs=1e-6)
    torch.testing.assert_close(padded_s.grad[:, :5], s_t.grad, atol=1e-6, rtol=0)
    assert float(padded_s.grad[:, 5:].abs().max()) == 0.0
    assert float(padded_s.grad[:, :5][~torch.tensor(mask)].abs().max()) == 0.0  # masked real-length positions too


def test_shape_mismatch_and_bad_kind_are_refused():
    with pytest.raises(ValueError, match="project the student"):
        embedding_loss(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="project the student"):
        token_cosine_loss(torch.randn(2, 3, 3), torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="cosine"):
        embedding_loss(torch.randn(2, 3), torch.randn(2, 3), kind="l1")

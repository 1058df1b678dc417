"""Token-level LM divergences (losses/sequence.py) against numpy values, their invariants, the chunked gradient against
the naive autograd one, and the hidden-state (chunked lm_head) form against logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from distill.errors import DistillError
from distill.losses import (
    chunked_head_loss,
    divergence_rows,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_kl,
    total_variation,
)

RNG = np.random.default_rng(0)


def np_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def np_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return (p * (np.log(p) - np.log(q))).sum(-1)


def np_reference(name: str, s: np.ndarray, t: np.ndarray, T: float, mask: np.ndarray | None, **kw) -> float:
    p, q = np_softmax(t / T), np_softmax(s / T)  # teacher, student
    if name == "forward_kl":
        rows = np_kl(p, q)
    elif name == "reverse_kl":
        rows = np_kl(q, p)
    elif name == "jsd":
        b = kw["beta"]
        m = b * p + (1 - b) * q
        rows = b * np_kl(p, m) + (1 - b) * np_kl(q, m)
    elif name == "tv":
        rows = 0.5 * np.abs(p - q).sum(-1)
    elif name == "skew_kl":
        a = kw["alpha"]
        rows = np_kl(p, a * p + (1 - a) * q)
    else:  # skew reverse
        a = kw["alpha"]
        rows = np_kl(q, a * q + (1 - a) * p)
    if mask is not None:
        rows = rows[mask]
    return float(rows.mean())


CASES = {
    "forward_kl": (lambda s, t, **k: forward_kl(s, t, **k), {}),
    "reverse_kl": (lambda s, t, **k: reverse_kl(s, t, **k), {}),
    "jsd": (lambda s, t, **k: generalized_jsd(s, t, beta=0.3, **k), {"beta": 0.3}),
    "tv": (lambda s, t, **k: total_variation(s, t, **k), {}),
    "skew_kl": (lambda s, t, **k: skew_kl(s, t, alpha=0.1, **k), {"alpha": 0.1}),
    "skew_rkl": (lambda s, t, **k: skew_kl(s, t, alpha=0.2, reverse=True, **k), {"alpha": 0.2}),
}


def logits(b: int = 3, t: int = 5, v: int = 11, scale: float = 2.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = RNG.normal(size=(b, t, v)) * scale
    te = RNG.normal(size=(b, t, v)) * scale
    mask = RNG.random((b, t)) > 0.3
    mask[0, 0] = True
    return s, te, mask


@pytest.mark.parametrize("chunk", [None, 4, 512])
@pytest.mark.parametrize("T", [1.0, 2.5])
@pytest.mark.parametrize("name", list(CASES))
def test_against_numpy(name: str, T: float, chunk: int | None) -> None:
    fn, kw = CASES[name]
    s, t, mask = logits()
    got = fn(torch.tensor(s), torch.tensor(t), temperature=T, mask=torch.tensor(mask), chunk_size=chunk)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(np_reference(name, s, t, T, mask, **kw), rel=1e-5, abs=1e-6)
    unmasked = fn(torch.tensor(s).reshape(-1, 11), torch.tensor(t).reshape(-1, 11), temperature=T, chunk_size=chunk)
    assert unmasked.item() == pytest.approx(np_reference(name, s, t, T, None, **kw), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_zero_on_equal_distributions_positive_otherwise(name: str) -> None:
    fn, _ = CASES[name]
    s, t, _ = logits()
    z = torch.tensor(s, dtype=torch.float32)
    assert abs(fn(z, z + 3.0, temperature=2.0).item()) < 1e-6  # shifted logits: the same distribution
    assert fn(z, torch.tensor(t, dtype=torch.float32)).item() > 1e-3


@pytest.mark.parametrize("name", list(CASES))
def test_masked_rows_contribute_nothing(name: str) -> None:
    fn, _ = CASES[name]
    s, t, mask = logits()
    s_t = torch.tensor(s, dtype=torch.float32, requires_grad=True)
    base = fn(s_t, torch.tensor(t, dtype=torch.float32), mask=torch.tensor(mask), chunk_size=4)
    base.backward()
    garbage_s = s.copy()
    garbage_t = t.copy()
    garbage_s[~mask] = 1e4 * RNG.normal(size=garbage_s[~mask].shape)
    garbage_t[~mask] = np.nan  # not even NaN leaks in from a dropped row
    s2 = torch.tensor(garbage_s, dtype=torch.float32, requires_grad=True)
    other = fn(s2, torch.tensor(garbage_t, dtype=torch.float32), mask=torch.tensor(mask), chunk_size=4)
    other.backward()
    assert other.item() == pytest.approx(base.item(), abs=1e-7)
    assert torch.equal(s2.grad[torch.tensor(~mask)], torch.zeros_like(s2.grad[torch.tensor(~mask)]))
    torch.testing.assert_close(s2.grad, s_t.grad)
    none = fn(s_t, torch.tensor(t, dtype=torch.float32), mask=torch.zeros(3, 5, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad


@pytest.mark.parametrize("name", list(CASES))
def test_chunked_gradient_equals_naive(name: str) -> None:
    fn, _ = CASES[name]
    s, t, mask = logits(b=4, t=9, v=37, scale=3.0)
    grads, values = [], []
    for chunk in (None, 5):
        x = torch.tensor(s, dtype=torch.float32, requires_grad=True)
        loss = fn(x, torch.tensor(t, dtype=torch.float32), temperature=1.7, mask=torch.tensor(mask), chunk_size=chunk)
        (0.7 * loss).backward()  # a weight downstream: grad_output != 1
        grads.append(x.grad)
        values.append(loss.item())
    assert values[1] == pytest.approx(values[0], abs=1e-6)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=0)
    assert grads[0].abs().sum() > 0


def test_jsd_limits_and_beta_range() -> None:
    s, t, mask = logits()
    S, Tt, M = torch.tensor(s), torch.tensor(t), torch.tensor(mask)
    fkl, rkl = forward_kl(S, Tt, mask=M), reverse_kl(S, Tt, mask=M)
    # TRL's convention at the ends: beta=0 is forward KL, beta=1 reverse KL
    assert generalized_jsd(S, Tt, beta=0.0, mask=M).item() == pytest.approx(fkl.item(), rel=1e-6)
    assert generalized_jsd(S, Tt, beta=1.0, mask=M).item() == pytest.approx(rkl.item(), rel=1e-6)
    # and the formula's own limits: JSD_b / b -> KL(p||q) as b -> 0, JSD_b / (1-b) -> KL(q||p) as b -> 1
    eps = 1e-4
    assert generalized_jsd(S, Tt, beta=eps, mask=M).item() / eps == pytest.approx(fkl.item(), rel=1e-2)
    assert generalized_jsd(S, Tt, beta=1 - eps, mask=M).item() / eps == pytest.approx(rkl.item(), rel=1e-2)
    for bad in (-0.1, 1.5):
        with pytest.raises(DistillError, match="beta"):
            generalized_jsd(S, Tt, beta=bad)
    with pytest.raises(DistillError, match="alpha"):
        skew_kl(S, Tt, alpha=2.0)
    # skew alpha = 0 is plain KL
    assert skew_kl(S, Tt, alpha=0.0, mask=M).item() == pytest.approx(fkl.item(), rel=1e-6)
    assert skew_kl(S, Tt, alpha=0.0, reverse=True, mask=M).item() == pytest.approx(rkl.item(), rel=1e-6)


def test_temperature_divides_logits_without_t_squared() -> None:
    s, t, _ = logits()
    S, Tt = torch.tensor(s), torch.tensor(t)
    assert forward_kl(S, Tt, temperature=2.0).item() == pytest.approx(forward_kl(S / 2, Tt / 2).item(), rel=1e-6)


def test_bf16_logits_softmax_in_float32() -> None:
    s, t, mask = logits()
    S = torch.tensor(s, dtype=torch.bfloat16, requires_grad=True)
    loss = forward_kl(S, torch.tensor(t, dtype=torch.bfloat16), mask=torch.tensor(mask), chunk_size=4)
    ref = np_reference("forward_kl", S.detach().float().numpy(), torch.tensor(t, dtype=torch.bfloat16).float().numpy(),
                       1.0, mask)
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(ref, rel=1e-5)
    loss.backward()
    assert S.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("bias", [False, True])
def test_chunked_head_equals_logits_path(bias: bool) -> None:
    torch.manual_seed(0)
    n, hs_dim, ht_dim, vocab = 13, 6, 10, 29
    head_s = torch.nn.Linear(hs_dim, vocab, bias=bias)
    head_t = torch.nn.Linear(ht_dim, vocab, bias=bias).requires_grad_(False)
    hs = torch.randn(2, n, hs_dim, requires_grad=True)
    ht = torch.randn(2, n, ht_dim)
    labels = torch.randint(0, vocab, (2, n))
    labels[0, :3] = -100
    mask = torch.rand(2, n) > 0.2
    rows_fn = divergence_rows("jsd", temperature=2.0, beta=0.4)

    def naive() -> tuple[torch.Tensor, ...]:
        s_logits, t_logits = head_s(hs), head_t(ht)
        soft = generalized_jsd(s_logits, t_logits, beta=0.4, temperature=2.0, mask=mask, chunk_size=None)
        keep = mask & (labels != -100)
        hard = torch.nn.functional.cross_entropy(s_logits[keep], labels[keep])
        loss = 0.6 * soft + 0.4 * hard
        loss.backward()
        return loss.detach(), soft.detach(), hard.detach(), hs.grad.clone(), head_s.weight.grad.clone()

    ref = naive()
    hs.grad = None
    head_s.zero_grad(set_to_none=True)
    loss, soft, hard = chunked_head_loss(hs, head_s, ht, head_t, rows_fn, labels=labels, mask=mask,
                                         soft_weight=0.6, hard_weight=0.4, chunk_size=4)
    loss.backward()
    for got, want in zip((loss, soft, hard, hs.grad, head_s.weight.grad), ref):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert head_t.weight.grad is None


def test_chunked_cross_entropy_equals_hard_loss() -> None:
    from distill.losses import chunked_cross_entropy, hard_loss

    s, _, mask = logits(b=3, t=6, v=17)
    labels = torch.tensor(RNG.integers(0, 17, size=(3, 6)))
    labels[1, :2] = -100
    grads = []
    for fn in (lambda x: hard_loss(x, labels, mask=torch.tensor(mask)),
               lambda x: chunked_cross_entropy(x, labels, mask=torch.tensor(mask), chunk_size=4)):
        x = torch.tensor(s, dtype=torch.float32, requires_grad=True)
        loss = fn(x)
        loss.backward()
        grads.append((loss.item(), x.grad))
    assert grads[1][0] == pytest.approx(grads[0][0], abs=1e-6)
    torch.testing.assert_close(grads[1][1], grads[0][1], atol=1e-6, rtol=0)


def test_no_gradient_work_under_no_grad() -> None:
    s, t, mask = logits()
    x = torch.tensor(s, dtype=torch.float32, requires_grad=True)
    with torch.no_grad():
        value = forward_kl(x, torch.tensor(t, dtype=torch.float32), mask=torch.tensor(mask), chunk_size=4)
    assert not value.requires_grad
    assert value.item() == pytest.approx(np_reference("forward_kl", s, t, 1.0, mask), rel=1e-5)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("chunk", [None, "auto"])
def test_minus_inf_logits_give_finite_gradients(name: str, chunk) -> None:
    """A token ruled out entirely (-inf logit: a banned token on both sides, or one the student alone rules out
    where the divergence stays finite — every one but forward KL, which is then infinite) must not turn the gradient
    into NaN: 0 · (−inf) is masked before the product, in the naive and the chunked version."""
    fn, _ = CASES[name]
    s, t, _ = logits()
    s, t = torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32)
    s[1, 2, 4] = t[1, 2, 4] = -float("inf")  # banned on both sides
    if name != "forward_kl":
        s[0, 1, 3] = -float("inf")  # the student alone: q = 0 where p > 0
    s.requires_grad_(True)
    fn(s, t, chunk_size=chunk).backward()
    assert torch.isfinite(s.grad).all()

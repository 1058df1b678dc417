"""Token-correct losses: padding a batch of a real transformers model to twice its length changes neither the loss nor
any gradient, for every method that accepts sequence models (tiny BERTs built from configs, nothing downloaded)."""

from __future__ import annotations

import copy

import pytest
import torch

from distill.batch import feature_mask, token_mask
from distill.errors import DistillError
from distill.losses import cosine_loss, hint_loss, kd_loss, pkt_loss, rkd_loss
from distill.methods import build_method
from distill.teachers import LiveTeacher

pytest.importorskip("transformers")
from hf_models import pad_to, ragged_batch, tiny_bert  # noqa: E402

# method -> options; feature methods also add the soft term (kd_weight) so its mask is exercised through them
METHODS = {
    "kd": {}, "dkd": {"warmup_steps": 0},
    "fitnet": {"kd_weight": 1.0}, "cosine": {"kd_weight": 1.0}, "rkd": {"kd_weight": 1.0},
    "pkt": {"kd_weight": 1.0}, "crd": {"kd_weight": 1.0, "negatives": 2, "embed_dim": 8},
}


def loss_and_grads(method: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    method.train()
    method.zero_grad(set_to_none=True)
    out = method(batch)
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
    return out["loss"].detach(), grads


@pytest.mark.parametrize("kind", ["sequence", "token"])
@pytest.mark.parametrize("name", list(METHODS))
def test_padding_to_twice_the_length_changes_nothing(name: str, kind: str) -> None:
    student = tiny_bert(kind, hidden=32, layers=2, seed=0)
    teacher = tiny_bert(kind, hidden=48, layers=3, seed=1)
    batch = ragged_batch(kind, batch=4, length=7)
    batch["index"] = torch.arange(4)  # crd's memory rows
    # Garbage (valid class ids, not -100) in the labels of the added positions: only the attention mask marks them.
    padded = pad_to(batch, 14, label_fill=1)
    method = build_method(name, student, LiveTeacher(teacher, tune=False), temperature=2.0, alpha=0.5,
                          options=METHODS[name])
    method.setup(batch, num_examples=4)
    reference = copy.deepcopy(method)  # same projectors, memory banks and counters for both runs
    loss, grads = loss_and_grads(reference, batch)
    loss_padded, grads_padded = loss_and_grads(method, padded)
    assert loss.item() > 0
    torch.testing.assert_close(loss_padded, loss, atol=1e-6, rtol=1e-6)
    assert grads.keys() == grads_padded.keys() and any(n.startswith("student.") for n in grads)
    for n in grads:
        torch.testing.assert_close(grads_padded[n], grads[n], atol=1e-6, rtol=1e-5, msg=lambda m: f"{n}: {m}")


def test_attention_transfer_refuses_sequence_models() -> None:
    """Attention transfer compares spatial maps `(C, H, W)`; on hidden states it says so before training."""
    student, teacher = tiny_bert(hidden=32), tiny_bert(hidden=48, layers=3, seed=1)
    method = build_method("attention", student, LiveTeacher(teacher, tune=False))
    with pytest.raises(DistillError, match="attention"):
        method.setup(ragged_batch("sequence"))


def test_token_mask_combines_attention_and_labels() -> None:
    batch = ragged_batch("token", batch=3, length=5)
    logits = torch.zeros(3, 5, 4)
    expected = batch["attention_mask"].bool() & (batch["labels"] != -100)
    assert torch.equal(token_mask(batch, logits), expected)
    unlabelled = {k: v for k, v in batch.items() if k != "labels"}
    assert torch.equal(token_mask(unlabelled, logits), batch["attention_mask"].bool())
    assert token_mask(batch, torch.zeros(3, 4)) is None  # (B, C): every example counts
    assert torch.equal(feature_mask(batch, torch.zeros(3, 5, 8)), batch["attention_mask"].bool())
    assert feature_mask(batch, torch.zeros(3, 8)) is None


@pytest.mark.parametrize("loss", [
    lambda s, t, m: kd_loss(s, t, temperature=2.0, mask=m),
    lambda s, t, m: hint_loss(s, t, mask=m),
    lambda s, t, m: cosine_loss(s, t, mask=m),
    lambda s, t, m: rkd_loss(s, t, mask=m),
    lambda s, t, m: pkt_loss(s, t, mask=m),
])
def test_masked_losses_ignore_padded_positions(loss) -> None:  # noqa: ANN001
    """Pure losses: garbage at masked positions of `(B, T, D)` tensors is invisible, values and gradients."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    s1 = s.clone().requires_grad_()
    s2 = torch.where(mask.unsqueeze(-1), s, torch.full_like(s, 1e3)).requires_grad_()
    t2 = torch.where(mask.unsqueeze(-1), t, torch.full_like(t, -1e3))
    a, b = loss(s1, t, mask), loss(s2, t2, mask)
    a.backward()
    b.backward()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(s1.grad * mask.unsqueeze(-1), s2.grad)
    assert float(s2.grad[~mask].abs().sum()) == 0.0

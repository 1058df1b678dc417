"""What the methods compute, as values: sigmoid KD's two terms on one scale, DKD's warm-up ramp (skipped steps do not
advance it) and sequence logits, AT/FitNet pair sums, CRD's memory bank, the ensemble target, the born-again chain,
and the recipe keys each method reads."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from pydantic import ValidationError
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

from distill.config import DistillConfig, TrainConfig
from distill.data import load_data
from distill.engine.loop import fit
from distill.errors import DistillError
from distill.losses import (
    attention_loss,
    binary_hard_loss,
    dkd_parts,
    hard_loss,
    hint_loss,
)
from distill.methods import METHODS, build_method, check_distill
from distill.models import create_model
from distill.teachers import EnsembleTeacher, LiveTeacher, freeze


class Fixed(nn.Module):
    """Returns its input as logits (plus 0 · a parameter, so there is something to train)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0 * self.w


def cnn(*channels: int) -> nn.Module:
    return create_model("cnn", input_shape=(1, 8, 8), num_classes=10, channels=channels)


def np_sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


# --- kd, sigmoid: true ----------------------------------------------------------------------------------------------

def test_sigmoid_kd_sums_both_terms_over_classes_and_averages_over_rows() -> None:
    s = np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5]])
    t = np.array([[1.0, -2.0, 0.5], [0.0, 1.0, -1.0]])
    y = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    T, alpha = 2.0, 0.7
    p, q = np_sigmoid(t / T), np_sigmoid(s / T)
    soft = T**2 * np.mean(np.sum(p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q)), axis=1))
    q1 = np_sigmoid(s)
    hard = np.mean(np.sum(-(y * np.log(q1) + (1 - y) * np.log(1 - q1)), axis=1))
    teacher_logits = torch.tensor(t, dtype=torch.float32)
    method = build_method("kd", Fixed(), lambda batch: teacher_logits, temperature=T, alpha=alpha,
                          options={"sigmoid": True})
    out = method((torch.tensor(s, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)))
    assert out["soft"].item() == pytest.approx(soft, rel=1e-5)
    assert out["hard"].item() == pytest.approx(hard, rel=1e-5)  # a mean over B·C would be hard / 3
    assert out["loss"].item() == pytest.approx(alpha * soft + (1 - alpha) * hard, rel=1e-5)


def test_binary_hard_loss_skips_unlabelled_rows_and_refuses_class_indices() -> None:
    s = torch.tensor([[0.5, -1.0], [2.0, 0.0]])
    y = torch.tensor([[1.0, 0.0], [-100.0, -100.0]])
    want = -(np.log(np_sigmoid(0.5)) + np.log(1 - np_sigmoid(-1.0)))
    assert binary_hard_loss(s, y).item() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError, match="multi-hot"):
        binary_hard_loss(s, torch.tensor([0, 1]))
    method = build_method("kd", Fixed(), lambda batch: s, options={"sigmoid": True})
    with pytest.raises(DistillError, match="multi-hot labels"):
        method((s, torch.tensor([0, 1])))


# --- dkd --------------------------------------------------------------------------------------------------------------

def test_dkd_ramp_is_the_papers_warmup_as_a_fraction_of_the_run() -> None:
    method = build_method("dkd", Fixed(), lambda batch: batch[0], temperature=4.0)
    for done, want in [(0, 1 / 20), (9, 10 / 20), (18, 19 / 20), (19, 1.0), (200, 1.0)]:
        method.on_step(done, 240)  # 240 steps: W = 240 · 20/240 = 20 updates, as 20 of 240 epochs
        assert method.ramp() == pytest.approx(want)
    method.on_step(0, 1000)
    assert method.ramp() == pytest.approx(1 / 83)  # W = round(1000 / 12) = 83
    off = build_method("dkd", Fixed(), lambda batch: batch[0], options={"warmup": 0})
    assert off.ramp() == 1.0
    fixed = build_method("dkd", Fixed(), lambda batch: batch[0], options={"warmup_steps": 4})
    assert fixed.ramp() == pytest.approx(0.25)
    with pytest.raises(DistillError, match="warm-up is a fraction of the run"):
        build_method("dkd", Fixed(), lambda batch: batch[0]).ramp()


def test_dkd_loss_scales_its_terms_by_the_ramp() -> None:
    torch.manual_seed(0)
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    method = build_method("dkd", Fixed(), lambda batch: t, temperature=4.0).train()
    method.on_step(4, 240)  # w = 5 / 20
    out = method((s, y))
    tckd, nckd = dkd_parts(s, t, y, temperature=4.0)
    want = hard_loss(s, y) + 0.25 * (1.0 * tckd + 8.0 * nckd)
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-6)
    assert out["dkd_weight"].item() == pytest.approx(0.25)


def test_skipped_nonfinite_steps_do_not_advance_the_dkd_ramp() -> None:
    teacher, student = freeze(cnn(8, 16)), cnn(4, 8)
    method = build_method("dkd", student, LiveTeacher(teacher), options={"warmup": 0.5})
    seen: list[float] = []
    real = method.forward

    def forward(batch):  # noqa: ANN001, ANN202
        seen.append(method.ramp())
        out = real(batch)
        if len(seen) == 2:  # the second step's loss is NaN: skipped, no update
            out["loss"] = out["loss"] * float("nan")
        return out

    method.forward = forward
    loader = DataLoader(load_data("digits").train, batch_size=32)
    fit(method, loader, TrainConfig(epochs=1, max_steps=6, lr=0.01, channels_last=False),
        accelerator=Accelerator(cpu=True), phase="dkd", progress=False)
    assert seen == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1.0, 1.0, 1.0])  # W = 0.5 · 6 = 3; step 2 repeats w


def test_dkd_flattens_sequence_logits_under_the_label_mask() -> None:
    torch.manual_seed(1)
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    y = torch.tensor([[1, 2, -100], [0, -100, 4]])
    method = build_method("dkd", Fixed(), lambda batch: t, options={"warmup": 0}).train()
    out = method({"inputs": s, "labels": y})
    keep = y != -100
    tckd, nckd = dkd_parts(s[keep], t[keep], y[keep], temperature=4.0)  # only the 4 labelled positions
    assert out["tckd"].item() == pytest.approx(tckd.item(), rel=1e-6)
    assert out["nckd"].item() == pytest.approx(nckd.item(), rel=1e-6)
    with pytest.raises(DistillError, match="do not match logits"):
        method({"inputs": s, "labels": torch.tensor([1, 2])})


# --- attention transfer, fitnet ------------------------------------------------------------------------------------

def _feature_method(name: str) -> tuple:
    torch.manual_seed(0)
    loader = DataLoader(load_data("digits").train, batch_size=8)
    batch = next(iter(loader))
    method = build_method(name, cnn(4, 8), LiveTeacher(freeze(cnn(8, 16))))
    method.setup(batch, num_examples=len(loader.dataset))
    return method, batch


def test_attention_sums_pairs_at_the_papers_beta() -> None:
    method, batch = _feature_method("attention")
    assert method.options.feature_weight == 500.0  # β/2, β = 1000
    tapped = method.bridge.run(method.student, method.teacher, batch)
    per_pair = [attention_loss(s, t) for s, t in zip(tapped.student, tapped.teacher)]
    assert len(per_pair) == 2
    out = method(batch)
    assert out["feature"].item() == pytest.approx(sum(p.item() for p in per_pair), rel=1e-5)
    want = out["hard"].item() + 500.0 * out["feature"].item()
    assert out["loss"].item() == pytest.approx(want, rel=1e-5)


def test_fitnet_uses_one_middle_hint_and_sums_named_pairs() -> None:
    method, batch = _feature_method("fitnet")
    assert [(p.student, p.teacher) for p in method.bridge.pairs] == [("features.0", "features.0")]
    teacher = LiveTeacher(freeze(cnn(8, 16)))
    two = build_method("fitnet", cnn(4, 8), teacher,
                       options={"pairs": [["features.0", "features.0"], ["features.1", "features.1"]]})
    two.setup(batch, num_examples=100)
    tapped = two.bridge.run(two.student, two.teacher, batch)
    want = sum(hint_loss(s, t).item() for s, t in zip(tapped.student, tapped.teacher))
    assert two(batch)["feature"].item() == pytest.approx(want, rel=1e-5)


# --- crd ---------------------------------------------------------------------------------------------------------------

def test_crd_bank_has_one_row_per_example_and_momentum_updates() -> None:
    dataset = load_data("digits").train
    batch = next(iter(DataLoader(dataset, batch_size=8)))
    method = build_method("crd", cnn(4, 8), LiveTeacher(freeze(cnn(8, 16))),
                          options={"negatives": 32, "embed_dim": 4, "momentum": 0.5})
    method.setup(batch, num_examples=len(dataset))
    method.train()
    embeds: dict[str, torch.Tensor] = {}
    method.embed_s.register_forward_hook(lambda m, a, o: embeds.__setitem__("s", torch.nn.functional.normalize(o.detach(), dim=1)))
    method.embed_t.register_forward_hook(lambda m, a, o: embeds.__setitem__("t", torch.nn.functional.normalize(o.detach(), dim=1)))
    idx = batch["index"]
    method(batch)
    assert method.bank_s.shape == (len(dataset), 4)
    assert torch.allclose(method.bank_s[idx], embeds["s"], atol=1e-6)  # first sight: the embedding itself
    assert torch.allclose(method.bank_t[idx], embeds["t"], atol=1e-6)
    assert int(method.filled.sum()) == 8
    old_s, old_t = method.bank_s[idx].clone(), method.bank_t[idx].clone()
    with torch.no_grad():
        method.embed_s.weight.add_(0.5)  # new embeddings differ from the stored rows
        method.embed_t.weight.sub_(0.5)
    method(batch)
    want_s = torch.nn.functional.normalize(0.5 * old_s + 0.5 * embeds["s"], dim=1)
    want_t = torch.nn.functional.normalize(0.5 * old_t + 0.5 * embeds["t"], dim=1)
    assert torch.allclose(method.bank_s[idx], want_s, atol=1e-6)
    assert torch.allclose(method.bank_t[idx], want_t, atol=1e-6)
    untouched = torch.ones(len(dataset), dtype=torch.bool)
    untouched[idx] = False
    assert method.bank_s[untouched].abs().sum() == 0  # no other row changed
    # one epoch over the whole set fills every row and never grows the bank
    for b in DataLoader(dataset, batch_size=256):
        method(b)
    assert method.bank_s.shape[0] == len(dataset) and bool(method.filled.all())


def test_crd_negatives_come_from_filled_rows_never_the_own_row() -> None:
    dataset = load_data("digits").train
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    method = build_method("crd", cnn(4, 8), LiveTeacher(freeze(cnn(8, 16))), options={"negatives": 500})
    method.setup(batch, num_examples=len(dataset))
    filled = torch.tensor([3, 17, 40, 41, 900])
    method.filled[filled] = 1
    index = torch.tensor([17, 41, 5])  # 5 is not filled: it may draw any filled row
    neg = method.negatives(index)
    assert neg.shape == (3, 500)
    assert set(neg.unique().tolist()) <= set(filled.tolist())
    assert not bool((neg == index.unsqueeze(1)).any())
    assert set(neg[2].unique().tolist()) == set(filled.tolist())  # uniform over all 5 (500 draws)
    with pytest.raises(DistillError, match="training example"):
        method({**batch, "index": torch.tensor([0, 1, 2, len(dataset)])})


# --- ensemble, born-again ------------------------------------------------------------------------------------------

def test_ensemble_teacher_is_the_weighted_mean_of_tempered_probabilities() -> None:
    z1 = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    z2 = np.array([[-1.0, 1.0, 0.0], [2.0, -2.0, 0.0]])
    T, w = 2.0, np.array([3.0, 1.0])

    class Const(nn.Module):
        def __init__(self, z: np.ndarray) -> None:
            super().__init__()
            self.register_buffer("z", torch.tensor(z, dtype=torch.float32))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.z

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    want = (w[0] * softmax(z1 / T) + w[1] * softmax(z2 / T)) / w.sum()
    source = EnsembleTeacher([Const(z1), Const(z2)], temperature=T, weights=list(w))
    got = torch.softmax(source((torch.zeros(2, 1),)) / T, dim=-1).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_born_again_chain_teaches_each_generation_with_the_previous_student(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from test_methods import run_cli

    from distill.methods.born_again import BornAgain

    teachers: list[dict[str, torch.Tensor]] = []
    real = BornAgain.teacher_source.__func__

    def record(cls, models, options, temperature):  # noqa: ANN001, ANN202
        source = real(cls, models, options, temperature)
        teachers.append({k: v.clone() for k, v in source.model.state_dict().items()})
        return source

    monkeypatch.setattr(BornAgain, "teacher_source", classmethod(record))
    run = run_cli(tmp_path, "distill.method=born_again", "distill.options.generations=3")
    assert len(teachers) == 3
    links = ["scratch", "distilled.1", "distilled.2"]  # generation g learns from the student before it
    for got, name in zip(teachers, links):
        saved = load_file(str(run / "checkpoints" / f"{name}.safetensors"))
        assert all(torch.equal(got[k].contiguous(), saved[k].contiguous()) for k in saved), name
    assert not all(torch.equal(teachers[0][k], teachers[1][k]) for k in teachers[0])


# --- recipe keys each method reads -------------------------------------------------------------------------------

READS = {"kd": {"temperature", "alpha"}, "ensemble": {"temperature", "alpha"}, "born_again": {"temperature", "alpha"},
         "dkd": {"temperature"}, "fitnet": {"temperature"}, "attention": {"temperature"}, "rkd": {"temperature"},
         "pkt": {"temperature"}, "crd": {"temperature"}, "cosine": {"temperature"}, "scratch": set(),
         "lm_kd": {"temperature", "alpha"}, "lm_cached": {"temperature", "alpha"}, "embedding": {"temperature"}, "distilbert": {"temperature"}}


def test_every_method_declares_the_keys_it_reads() -> None:
    assert {name: set(METHODS.get(name).uses) for name in METHODS} == READS


@pytest.mark.parametrize(("method", "key"), [("dkd", "alpha"), ("fitnet", "alpha"), ("crd", "alpha"),
                                             ("scratch", "temperature"), ("scratch", "alpha")])
def test_a_key_the_user_set_and_the_method_ignores_is_refused(method: str, key: str) -> None:
    cfg = DistillConfig.model_validate({"method": method, key: 0.5 if key == "alpha" else 3.0})
    with pytest.raises(DistillError, match=rf"distill.{key} is set .* {method!r} does not use it"):
        check_distill(cfg)
    check_distill(DistillConfig.model_validate({"method": method}))  # defaults nobody wrote stay silent
    check_distill(DistillConfig.model_validate({"method": method, key: None}))  # null = not written


def test_keys_a_method_reads_are_accepted() -> None:
    check_distill(DistillConfig.model_validate({"method": "dkd", "temperature": 2.0}))
    check_distill(DistillConfig.model_validate({"method": "kd", "temperature": 2.0, "alpha": 0.5}))
    with pytest.raises(ValidationError):
        DistillConfig.model_validate({"method": "kd", "alpha": "x"})
    assert math.isclose(DistillConfig.model_validate({"method": "kd", "alpha": None}).alpha, 0.9)

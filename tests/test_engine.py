"""The training loop and the KD method: frozen teacher, gradients only to the student, non-finite policy."""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distill.config import TrainConfig
from distill.engine.loop import NonFiniteLossError, fit
from distill.errors import DistillError
from distill.losses import hinton_loss, kd_loss
from distill.methods import METHODS, build_method
from distill.teachers import LiveTeacher


def data(n: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))


def models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(6, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))
    student = nn.Linear(6, 3)
    return teacher, student


def test_kd_method_equals_hinton_loss() -> None:
    teacher, student = models()
    method = build_method("kd", student, LiveTeacher(teacher), temperature=3.0, alpha=0.7)  # textbook by default
    x, y = next(iter(data()))
    out = method((x, y))
    with torch.no_grad():
        expected = hinton_loss(student(x), teacher.eval()(x), y, temperature=3.0, alpha=0.7)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(out) == {"loss", "soft", "hard"}


def test_kd_standardize_option() -> None:
    """`standardize: true`: Hinton's soft term on standardised logits (Sun et al. 2024), (z - mean) / std per row."""
    teacher, student = models()
    method = build_method("kd", student, LiveTeacher(teacher), temperature=2.0, alpha=0.6, options={"standardize": True})
    x, y = next(iter(data()))
    out = method((x, y))
    with torch.no_grad():
        s, t = student(x), teacher.eval()(x)
        z = lambda v: (v - v.mean(-1, keepdim=True)) / v.std(-1, keepdim=True)  # noqa: E731
        expected = 0.6 * kd_loss(z(s), z(t), temperature=2.0) + 0.4 * nn.functional.cross_entropy(s, y)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="softmax teachers"):
        build_method("kd", student, None, options={"sigmoid": True, "standardize": True})


def test_teacher_is_not_a_submodule_and_stays_frozen() -> None:
    teacher, student = models()
    before = copy.deepcopy(teacher.state_dict())
    method = build_method("kd", student, LiveTeacher(teacher), temperature=4.0, alpha=0.9)
    assert {id(p) for p in method.parameters()} == {id(p) for p in student.parameters()}
    start = copy.deepcopy(student.state_dict())
    summary = fit(method, data(), TrainConfig(epochs=2), accelerator=Accelerator(cpu=True), phase="t", progress=False)
    assert summary["steps"] == 8
    for k, v in teacher.state_dict().items():  # weights *and* BatchNorm running stats bit-identical
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in teacher.parameters())
    assert not teacher.training
    assert any(not torch.equal(v, start[k]) for k, v in student.state_dict().items())


def test_same_seed_same_result() -> None:
    results = []
    for _ in range(2):
        teacher, student = models()
        method = build_method("kd", student, LiveTeacher(teacher), temperature=2.0, alpha=0.5)
        fit(method, data(), TrainConfig(epochs=1), accelerator=Accelerator(cpu=True), phase="t", progress=False)
        results.append(student.weight.detach().clone())
    assert torch.equal(results[0], results[1])


class NaNAfter(nn.Module):
    """Returns NaN logits for every call after the first `good` ones."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 3)
        self.calls, self.good = 0, good

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.lin(x)
        return out if self.calls <= self.good else out * float("nan")


def test_nonfinite_steps_are_skipped_then_abort() -> None:
    student = NaNAfter(good=2)
    method = build_method("scratch", student, None)
    cfg = TrainConfig(epochs=3, max_nonfinite=3, log_every=1)
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
        fit(method, data(), cfg, accelerator=Accelerator(cpu=True), phase="nan", progress=False)
    assert torch.isfinite(student.lin.weight).all()  # the NaN steps never updated the weights


def test_every_registered_method_builds_around_the_given_student() -> None:
    """Every registered method keeps the student it was given (trained in place, no copy), stores the hyper-parameters
    it was given, never registers the teacher, and validates its options (an unknown key is refused)."""
    from pydantic import ValidationError

    for name in METHODS.names():
        teacher, student = models()
        m = build_method(name, student, LiveTeacher(teacher), temperature=3.0, alpha=0.25)
        assert m.student is student, name
        assert (m.temperature, m.alpha) == (3.0, 0.25), name
        assert not {id(p) for p in teacher.parameters()} & {id(p) for p in m.parameters()}, name
        assert {id(p) for p in student.parameters()} <= {id(p) for p in m.parameters()}, name
        with pytest.raises((ValidationError, DistillError), match="no_such_option"):
            build_method(name, student, LiveTeacher(teacher), options={"no_such_option": 1})


def test_teacher_ignores_the_students_mixed_precision() -> None:
    """Accelerate runs the method's forward under autocast for `mixed_precision=bf16`; the live teacher must still
    compute its soft targets in fp32 (bf16 is opt-in through `distill.teacher_precision`)."""
    torch.manual_seed(0)
    teacher, student = nn.Linear(64, 3), nn.Linear(64, 3)
    x = torch.randn(8, 64)
    exact = teacher(x).detach()
    source = LiveTeacher(teacher)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):  # what Accelerate wraps forward in
        assert student(x).dtype == torch.bfloat16
        got = source((x, torch.zeros(8, dtype=torch.long)))
    assert torch.equal(got, exact)


def test_kd_loss_is_finite_with_impossible_teacher_classes() -> None:
    from distill.losses import kd_loss

    teacher = torch.tensor([[0.0, -float("inf"), 1.0]])  # the teacher rules class 1 out entirely
    student = torch.randn(1, 3)
    got = kd_loss(student, teacher)
    p = torch.tensor([0.0, 0.0, 1.0])
    p[0], p[2] = torch.softmax(torch.tensor([0.0, 1.0]), 0)
    q = torch.softmax(student[0], 0)
    expected = p[0] * (p[0].log() - q[0].log()) + p[2] * (p[2].log() - q[2].log())
    assert torch.isfinite(got) and abs(got.item() - expected.item()) < 1e-5


def test_dkd_warmup_counter_is_checkpointed() -> None:
    teacher, student = models()
    method = build_method("dkd", student, LiveTeacher(teacher), options={"warmup_steps": 10})
    method.train()
    x, y = next(iter(data()))
    for _ in range(3):
        method((x, y))
    assert int(method.state_dict()["steps_seen"]) == 3
    fresh = build_method("dkd", copy.deepcopy(student), LiveTeacher(teacher), options={"warmup_steps": 10})
    fresh.load_state_dict(method.state_dict())
    assert int(fresh.steps_seen) == 3


class _Images(torch.utils.data.Dataset):
    """8 labelled 1x4x4 images as `{"inputs", "labels", "index"}` items (what `Augmented` wraps)."""

    def __init__(self) -> None:
        self.x = torch.arange(8 * 16, dtype=torch.float32).reshape(8, 1, 4, 4) / 128

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        return {"inputs": self.x[i], "labels": torch.tensor(i % 2), "index": torch.tensor(i)}


class _Recording(nn.Module):
    """A method that records every batch it trains on; with `crash_at`, it dies on that call (a killed run)."""

    def __init__(self, crash_at: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.student = nn.Linear(16, 2)
        self.seen: list[tuple[list[int], list[int], torch.Tensor]] = []
        self.crash_at = crash_at

    def forward(self, batch: dict) -> dict:
        if self.crash_at is not None and len(self.seen) + 1 == self.crash_at:
            raise KeyboardInterrupt("killed")
        self.seen.append((batch["view"].tolist(), batch["index"].tolist(), batch["inputs"].clone()))
        loss = nn.functional.cross_entropy(self.student(batch["inputs"].flatten(1)), batch["labels"])
        return {"loss": loss}


def _augmented_loader(cfg) -> DataLoader:  # noqa: ANN001
    from distill.augment import Augmented

    gen = torch.Generator().manual_seed(0)
    return DataLoader(Augmented(_Images(), cfg, seed=7), batch_size=4, shuffle=True, generator=gen)


def test_the_loop_trains_epoch_e_on_view_e_mod_k_also_after_a_resume(tmp_path) -> None:  # noqa: ANN001
    """`fit` tells the dataset its epoch, so epoch e trains on augmentation view e % K -- the exact input a teacher
    cache scored for that view -- and a run resumed inside epoch e (whose loader restarts its own epoch counter at 0)
    still trains on view e % K, on the same examples in the same order as the uninterrupted run."""
    from distill.augment import AugmentConfig, Augmented
    from distill.engine.checkpoint import Checkpointer

    cfg = AugmentConfig(views=3, crop_padding=1, flip=True)
    train = TrainConfig(epochs=4, lr=0.01)  # 2 steps per epoch, 8 in all
    full = _Recording()
    fit(full, _augmented_loader(cfg), train, accelerator=Accelerator(cpu=True), phase="t", progress=False)
    assert [views for views, _, _ in full.seen] == [[e % 3] * 4 for e in range(4) for _ in range(2)]
    for step, (views, index, inputs) in enumerate(full.seen):
        fixed = Augmented(_Images(), cfg, seed=7, view=views[0])  # the view rebuilt on its own
        assert torch.equal(inputs, torch.stack([fixed[i]["inputs"] for i in index])), step
    assert not torch.equal(full.seen[0][2], full.seen[2][2])  # the views really differ

    killed = _Recording(crash_at=6)  # dies on epoch 2's second batch; step 5 (epoch 2, batch 0) was checkpointed
    with pytest.raises(KeyboardInterrupt):
        fit(killed, _augmented_loader(cfg), train, accelerator=Accelerator(cpu=True), phase="t", progress=False,
            checkpointer=Checkpointer(tmp_path, every=1))
    resumed = _Recording()
    fit(resumed, _augmented_loader(cfg), train, accelerator=Accelerator(cpu=True), phase="t", progress=False,
        checkpointer=Checkpointer(tmp_path, every=1, resume=True))
    assert [views for views, _, _ in resumed.seen] == [[2] * 4, [0] * 4, [0] * 4]  # epoch 2 (view 2), epoch 3 (view 0)
    for got, want in zip(resumed.seen, full.seen[5:]):
        assert got[1] == want[1] and torch.equal(got[2], want[2])
    assert torch.equal(resumed.student.weight, full.student.weight)


def test_distiller_fit_twice_keeps_projectors() -> None:
    from distill import Distiller
    from distill.models import create_model

    torch.manual_seed(0)
    x, y = torch.rand(64, 1, 8, 8), torch.arange(64) % 10
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    teacher = create_model("cnn", input_shape=(1, 8, 8), num_classes=10, channels=[8, 16])
    student = create_model("cnn", input_shape=(1, 8, 8), num_classes=10, channels=[4, 8])
    d = Distiller(teacher, student, method="fitnet", progress=False)
    d.fit(loader, epochs=1)
    bridge = d.method.bridge
    after_first = {k: v.clone() for k, v in bridge.state_dict().items()}
    d.fit(loader, epochs=1)
    assert d.method.bridge is bridge  # not rebuilt: its trained projectors carry over
    assert any(not torch.equal(v, after_first[k]) for k, v in bridge.state_dict().items())  # and keep training

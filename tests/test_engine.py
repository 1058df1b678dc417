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
from distill.losses import hinton_loss
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
    method = build_method("kd", student, LiveTeacher(teacher), temperature=3.0, alpha=0.7)
    x, y = next(iter(data()))
    out = method((x, y))
    with torch.no_grad():
        expected = hinton_loss(student(x), teacher.eval()(x), y, temperature=3.0, alpha=0.7)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(out) == {"loss", "soft", "hard"}


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


def test_every_registered_method_builds() -> None:
    teacher, student = models()
    for name in METHODS.names():
        m = build_method(name, copy.deepcopy(student), LiveTeacher(copy.deepcopy(teacher)))
        assert isinstance(m, nn.Module)


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


def test_prepared_loader_epoch_reaches_the_dataset() -> None:
    """The loop sets the epoch on Accelerate's loader, which forwards it to the dataset on iteration (setting it on
    the dataset alone is overwritten by the loader's own counter, which a resumed run restarts at 0)."""

    class Views(torch.utils.data.Dataset):
        epoch = -1

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int):
            return torch.tensor([float(self.epoch)]), torch.tensor(0)

    acc = Accelerator(cpu=True)
    loader = acc.prepare(DataLoader(Views(), batch_size=2))
    loader.set_epoch(3)
    x, _ = next(iter(loader))
    assert x.flatten().tolist() == [3.0, 3.0]


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

"""Every method: teacher bit-identical after training, gradients only to the student and its projectors, no hooks
left behind, and a two-step run through the CLI; bad input ends in one line and exit 2 with nothing written."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from conftest import RECIPES
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

from distill.cli import main
from distill.config import TrainConfig
from distill.data import load_data
from distill.engine.loop import fit
from distill.methods import METHODS, build_method
from distill.models import create_model
from distill.teachers import freeze

METHOD_NAMES = ["kd", "dkd", "ensemble", "born_again", "fitnet", "attention", "rkd", "pkt", "crd", "cosine"]
OPTIONS = {"crd": {"negatives": 16, "embed_dim": 8}, "dkd": {"warmup_steps": 2}, "kd": {"standardize": True}}
CNN_SETS = [
    "teacher.name=cnn", "teacher.kwargs={channels: [8, 16]}", "teacher.epochs=1",
    "student.name=cnn", "student.kwargs={channels: [4, 8]}",
    "train.epochs=1", "train.max_steps=2", "eval.latency_runs=1", "eval.latency_warmup=0", "eval.explorer_examples=1",
]


@pytest.fixture(scope="module")
def digits_loader() -> DataLoader:
    return DataLoader(load_data("digits").train, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))


def cnn(*channels: int) -> nn.Module:
    return create_model("cnn", input_shape=(1, 8, 8), num_classes=10, channels=channels)


def hooks(*models: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for model in models for m in model.modules())


def build(name: str) -> tuple[nn.Module, list[nn.Module]]:
    torch.manual_seed(0)
    teachers = [freeze(cnn(8, 16)), freeze(cnn(8, 16)), freeze(cnn(4, 8))]  # main, ensemble extra, previous gen.
    cls, opts = METHODS.get(name), OPTIONS.get(name, {})
    models = {"teacher": teachers[0], "extra": [teachers[1]], "previous": teachers[2], "generation": 0}
    method = build_method(name, cnn(4, 8), cls.teacher_source(models, opts, 4.0), temperature=4.0, alpha=0.9,
                          options=opts)
    return method, teachers


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_gradients_reach_only_student_and_projectors(name: str, digits_loader: DataLoader) -> None:
    method, teachers = build(name)
    batch = next(iter(digits_loader))
    method.setup(batch, num_examples=len(digits_loader.dataset))
    method.train()
    out = method(batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    teacher_ids = {id(p) for t in teachers for p in t.parameters()}
    assert not teacher_ids & {id(p) for p in method.parameters()}, "a teacher parameter is trainable"
    assert all(p.grad is None for t in teachers for p in t.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.student.parameters())
    extra = [n for n, _ in method.named_parameters() if not n.startswith("student.")]
    assert all(n.startswith(("bridge.projectors.", "embed_")) for n in extra), extra
    assert hooks(method.student, *teachers) == 0


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_teacher_bit_identical_after_training(name: str, digits_loader: DataLoader) -> None:
    method, teachers = build(name)
    before = [copy.deepcopy(t.state_dict()) for t in teachers]
    student_before = copy.deepcopy(method.student.state_dict())
    cfg = TrainConfig(epochs=1, max_steps=2, lr=0.01)
    fit(method, digits_loader, cfg, accelerator=Accelerator(cpu=True), phase=name, progress=False)
    for t, sd in zip(teachers, before):
        assert all(torch.equal(v, t.state_dict()[k]) for k, v in sd.items())  # weights and BN statistics
    assert any(not torch.equal(v, method.student.state_dict()[k]) for k, v in student_before.items())
    assert hooks(method.student, *teachers) == 0


def unset_ignored(sets: tuple[str, ...]) -> list[str]:
    """digits.yaml writes distill.temperature and distill.alpha; a method that reads neither refuses them, so unset
    what the chosen method ignores (`--set distill.alpha=null`)."""
    names = [s.split("=", 1)[1] for s in sets if s.startswith("distill.method=")]
    if not names or names[-1] not in METHODS:
        return []
    return [f"distill.{k}=null" for k in ("temperature", "alpha") if k not in METHODS.get(names[-1]).uses]


def run_cli(tmp_path: Path, *sets: str, name: str = "run") -> Path:
    out = tmp_path / name
    args = ["run", str(RECIPES / "digits.yaml"), "--out", str(out), "--no-progress"]
    for s in (*CNN_SETS, *sets, *unset_ignored(sets)):
        args += ["--set", s]
    main(args)
    return out


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_two_step_cli_run_and_student_export_has_no_projectors(name: str, tmp_path: Path) -> None:
    sets = [f"distill.method={name}"]
    sets += [f"distill.options.{k}={v}" for k, v in OPTIONS.get(name, {}).items()]
    if name == "ensemble":
        sets.append("distill.options.teachers=[{name: cnn, kwargs: {channels: [8, 16]}}]")
    if name == "born_again":
        sets.append("distill.options.generations=2")
    run = run_cli(tmp_path, *sets)
    assert (run / "report.html").is_file()
    exported = load_file(str(run / "student.safetensors"))
    assert set(exported) == set(cnn(4, 8).state_dict())  # the student only: no projector, head or bank keys
    if name == "born_again":
        assert (run / "checkpoints" / "distilled.1.safetensors").is_file()
    if name == "ensemble":
        assert "teacher.1" in (run / "report.json").read_text()


BAD = [
    (["distill.method=fitnet", "distill.options.pairs=[[features.9, features.0]]"], "student has no submodule 'features.9'"),
    (["distill.method=fitnet", "distill.options.pairs=[[features.0, features.1]]"], "cannot compare student 'features.0'"),
    (["distill.method=fitnest"], "unknown method 'fitnest'"),
    (["distill.method=attention", "student.name=mlp", "student.kwargs={hidden: [8]}"], "needs (C, H, W) feature maps"),
    (["distill.method=rkd", "student.name=mlp", "student.kwargs={hidden: []}"], "no feature stages to tap in the student"),
]


@pytest.mark.parametrize(("sets", "message"), BAD)
def test_bad_input_is_one_line_exit_2_nothing_written(sets: list[str], message: str, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    with pytest.raises(SystemExit) as exc:
        run_cli(tmp_path, *sets)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_pairs_command_prints_the_table(capsys) -> None:  # noqa: ANN001
    args = ["pairs", str(RECIPES / "digits.yaml"), "--set", "distill.method=fitnet"]
    for s in (*CNN_SETS, "distill.alpha=null"):
        args += ["--set", s]
    main(args)
    out = capsys.readouterr().out
    assert "features.0" in out and "conv1x1" in out and "fitnet" in out


def test_crd_state_loads_into_a_fresh_method() -> None:
    """A resume builds the method anew (banks of one row per training example, none filled) and loads a checkpoint."""
    from distill.batch import to_device
    from distill.methods import build_method
    from distill.teachers import LiveTeacher

    dataset = load_data("digits").train
    batch = to_device(next(iter(DataLoader(dataset, batch_size=16))), torch.device("cpu"))
    teacher = cnn(8, 16)
    trained = build_method("crd", cnn(4, 8), LiveTeacher(teacher), options={"negatives": 8})
    trained.setup(batch, num_examples=len(dataset))
    trained.train()
    trained(batch)
    state = trained.state_dict()
    assert state["bank_s"].shape[0] == len(dataset) and int(state["filled"].sum()) == 16
    fresh = build_method("crd", cnn(4, 8), LiveTeacher(teacher), options={"negatives": 8})
    fresh.setup(batch, num_examples=len(dataset))
    fresh.load_state_dict(state)
    for key in ("bank_s", "bank_t", "filled", "seed", "draws"):
        assert torch.equal(getattr(fresh, key), state[key]), key


def test_a_recipe_key_the_method_ignores_is_one_line_exit_2(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """A written distill.alpha, which dkd does not read, is refused before anything is written (the built-in recipes
    leave alpha at its default unwritten, so switching them to dkd with --set works)."""
    args = ["run", str(RECIPES / "digits.yaml"), "--out", str(tmp_path / "run"), "--set", "distill.method=dkd",
            "--set", "distill.alpha=0.9"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "distill.alpha is set to 0.9 but method 'dkd' does not use it" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()

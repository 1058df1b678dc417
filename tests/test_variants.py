"""`compress.variants` (issue 11 item 1): compressed teacher and student variants measured by the same evaluation code
into the same table. Checked against what each variant must be: fp32 ONNX predicts what PyTorch predicts, int8 is a
smaller file, global magnitude pruning zeroes the asked share without changing the parameter count, channel pruning
removes parameters; per-seed variants are averaged like the students."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from conftest import RECIPES, TINY

from torch.utils.data import DataLoader

from distill.cli import main
from distill.compress import prune_unstructured
from distill.deploy import load_run_data
from distill.engine.evaluate import accuracy
from distill.engine.io import load_weights
from distill.models import create_model
from distill.recipe import load_recipe
from distill.seeds import combine

pytest.importorskip("onnxruntime")
pytest.importorskip("torch_pruning")

VARIANTS = ["student_onnx", "student_int8", "teacher_pruned_50", "teacher_channels_50"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("variants") / "run"
    sets = [*TINY, f"compress.variants=[{', '.join(VARIANTS)}]"]
    with contextlib.redirect_stdout(io.StringIO()):
        main(["run", str(RECIPES / "digits.yaml"), "--out", str(out), "--no-progress", *sum((["--set", s] for s in sets), [])])
    return out, json.loads((out / "report.json").read_text())


def test_variants_join_the_table(run) -> None:
    out, report = run
    models = report["models"]
    assert list(models) == ["teacher", "scratch", "distilled", *VARIANTS]
    teacher, student = models["teacher"], models["distilled"]
    onnx, int8 = models["student_onnx"], models["student_int8"]
    # fp32 ONNX Runtime: the same predictions as the PyTorch student, measured by the same code
    for key in ("accuracy", "agreement", "ece"):
        assert onnx[key] == pytest.approx(student[key], abs=1e-6), key
    assert onnx["kl_to_teacher"] == pytest.approx(student["kl_to_teacher"], abs=1e-5)
    for row, name in ((onnx, "student_onnx.onnx"), (int8, "student_int8.onnx")):
        assert row["runtime"] == "onnxruntime" and row["params"] == student["params"]
        assert row["size_bytes"] == (out / "variants" / name).stat().st_size and row["file"] == f"variants/{name}"
        assert row["latency_ms_p50"] > 0 and row["throughput_per_s"] > 0
    assert int8["size_bytes"] < onnx["size_bytes"] and int8["int8"]["mode"] == "dynamic"  # an MLP: dynamic int8
    pruned, channels = models["teacher_pruned_50"], models["teacher_channels_50"]
    assert pruned["params"] == teacher["params"] and pruned["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert pruned["accuracy"] != teacher["accuracy"] or pruned["agreement"] < 1  # the zeros change the model
    assert channels["params"] < 0.6 * teacher["params"] and channels["size_bytes"] < teacher["size_bytes"]
    html = (out / "report.html").read_text()
    for name in VARIANTS:
        assert f"<b>{name}</b>" in html
    assert "fine-tuned 3 steps" in html and "ONNX Runtime, int8 (dynamic)" in html  # train.max_steps caps it


def test_per_seed_variants_are_averaged_like_the_students() -> None:
    def row(acc: float) -> dict:
        return {"accuracy": acc, "params": 10, "note": "ONNX Runtime, fp32"}

    models = {"teacher": row(0.9), "scratch@0": row(0.5), "distilled@0": row(0.6), "scratch@1": row(0.55),
              "distilled@1": row(0.7), "teacher_int8": row(0.89), "student_onnx@0": row(0.6), "student_onnx@1": row(0.7)}
    got = combine(models, [0, 1])["models"]
    assert list(got) == ["teacher", "scratch", "distilled", "teacher_int8", "student_onnx"]
    assert got["student_onnx"]["accuracy"] == pytest.approx(0.65) and got["student_onnx"]["n_seeds"] == 2
    assert got["student_onnx"]["note"] == "ONNX Runtime, fp32" and got["teacher_int8"] == models["teacher_int8"]


def test_onnx_difference_combines_over_seeds_as_the_largest() -> None:
    """A bound, not an estimate: the per-seed ONNX-vs-PyTorch differences combine by max, without an interval."""
    models = {"teacher": {"accuracy": 0.9}, "scratch@0": {"accuracy": 0.5}, "distilled@0": {"accuracy": 0.6},
              "scratch@1": {"accuracy": 0.5}, "distilled@1": {"accuracy": 0.6},
              "student_onnx@0": {"accuracy": 0.6, "onnx_max_abs_diff": 1e-6},
              "student_onnx@1": {"accuracy": 0.6, "onnx_max_abs_diff": 3e-6}}
    row = combine(models, [0, 1])["models"]["student_onnx"]
    assert row["onnx_max_abs_diff"] == 3e-6 and row["ci95"]["onnx_max_abs_diff"] is None


def test_pareto_front_keeps_only_undominated_points() -> None:
    from distill.report.plots import pareto_front

    points = [(0.6, 77.0), (0.05, 26.5), (0.11, 77.1), (0.2, 40.5), (0.08, 26.4), (0.14, 77.0), (0.05, 20.0)]
    assert pareto_front(points) == [(0.05, 26.5), (0.11, 77.1)]


FINETUNE = [s for s in TINY if not s.startswith(("train.max_steps", "teacher.epochs"))] + [
    "teacher.epochs=3", "compress.variants=[teacher_pruned_90, teacher_channels_50]", "compress.finetune.epochs=3",
    "compress.finetune.lr=0.003"]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("finetune") / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        main(["run", str(RECIPES / "digits.yaml"), "--out", str(out), "--no-progress",
              *sum((["--set", s] for s in FINETUNE), [])])
    return out, json.loads((out / "report.json").read_text())


def test_pruned_variants_are_fine_tuned_through_the_loop_and_recover(finetuned) -> None:
    """`compress.finetune` (issue 11: "50% and 80%, short fine-tune"): the pruned teacher trains as phases of the run
    (logged like every phase), keeps its zeros, and gets back accuracy that pruning alone lost — measured against the
    same teacher pruned the same way without the fine-tune."""
    out, report = finetuned
    recipe = load_recipe(out / "config.yaml")
    data = load_run_data(recipe)
    teacher = create_model(recipe.teacher.name, input_shape=data.input_shape, num_classes=data.num_classes,
                           **recipe.teacher.kwargs)
    load_weights(teacher, out / "checkpoints" / "teacher.safetensors")
    before = accuracy(prune_unstructured(teacher.eval(), 0.9), DataLoader(data.test, batch_size=256))
    models, phases = report["models"], report["phases"]
    pruned = models["teacher_pruned_90"]
    assert pruned["sparsity"] == pytest.approx(0.9, abs=0.01)  # the masks held through training
    steps = 3 * -(-len(data.teacher_train) // recipe.data.batch_size)  # 3 epochs of the teacher's training set
    assert phases["teacher_pruned_90.finetune"]["steps"] == steps
    assert phases["teacher_channels_50.finetune"]["steps"] == steps
    assert pruned["accuracy"] > before + 0.05, (pruned["accuracy"], before, models["teacher"]["accuracy"])
    assert f"fine-tuned {steps} steps at lr 0.003" in pruned["note"]
    logged = {json.loads(line).get("phase") for line in (out / "metrics.jsonl").read_text().splitlines()}
    assert {"teacher_pruned_90.finetune", "teacher_channels_50.finetune"} <= logged


def test_onnx_variants_report_their_difference_from_pytorch(run) -> None:
    out, report = run
    for name in ("student_onnx", "student_int8"):
        assert "onnx_max_abs_diff" in report["models"][name]
    assert report["models"]["student_onnx"]["onnx_max_abs_diff"] < 1e-4  # fp32: the same arithmetic
    assert report["models"]["student_int8"]["onnx_max_abs_diff"] > 1e-4  # int8 rounds
    assert "onnx_max_abs_diff" not in report["models"]["teacher_pruned_50"]
    assert "ONNX max |Δ| vs PyTorch" in (out / "report.html").read_text()

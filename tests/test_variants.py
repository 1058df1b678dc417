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

from distill.cli import main
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
    assert "no fine-tune" in html and "ONNX Runtime, int8 (dynamic)" in html


def test_per_seed_variants_are_averaged_like_the_students() -> None:
    def row(acc: float) -> dict:
        return {"accuracy": acc, "params": 10, "note": "ONNX Runtime, fp32"}

    models = {"teacher": row(0.9), "scratch@0": row(0.5), "distilled@0": row(0.6), "scratch@1": row(0.55),
              "distilled@1": row(0.7), "teacher_int8": row(0.89), "student_onnx@0": row(0.6), "student_onnx@1": row(0.7)}
    got = combine(models, [0, 1])["models"]
    assert list(got) == ["teacher", "scratch", "distilled", "teacher_int8", "student_onnx"]
    assert got["student_onnx"]["accuracy"] == pytest.approx(0.65) and got["student_onnx"]["n_seeds"] == 2
    assert got["student_onnx"]["note"] == "ONNX Runtime, fp32" and got["teacher_int8"] == models["teacher_int8"]


def test_pareto_front_keeps_only_undominated_points() -> None:
    from distill.report.plots import pareto_front

    points = [(0.6, 77.0), (0.05, 26.5), (0.11, 77.1), (0.2, 40.5), (0.08, 26.4), (0.14, 77.0), (0.05, 20.0)]
    assert pareto_front(points) == [(0.05, 26.5), (0.11, 77.1)]

"""`distill export` and `distill.load_student`: round trips, ONNX fidelity, int8 accuracy, and bad input."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import RECIPES
from conftest import run_cli as cli

from distill import load_student
from distill.deploy import export_run
from distill.errors import DistillError
from distill.pipeline import run_recipe
from distill.recipe import load_recipe

# A student trained on every label for a few epochs: accurate enough (~80-95%) that an int8 accuracy loss shows.
BASE = ["data.labelled_fraction=1.0", "teacher.kwargs.hidden=[32]", "teacher.epochs=8", "train.epochs=6",
        "eval.latency_runs=3", "eval.latency_warmup=1"]
INT8_TOLERANCE = 0.03  # int8 accuracy may trail fp32 by at most 3 points on digits' 450 test images (1 image = 0.22)


def _run(root, name: str, *sets: str):
    recipe = load_recipe(RECIPES / "digits.yaml", [*BASE, *sets])
    return run_recipe(recipe, root / name, progress=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-runs")
    return {
        "mlp": _run(root, "mlp", "student.kwargs.hidden=[32]"),
        "cnn": _run(root, "cnn", "student.name=cnn", "student.kwargs={channels: [8, 16]}", "train.epochs=4"),
    }



def _test_batch(n: int = 64) -> torch.Tensor:
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data[:n], dtype=torch.float32)
    return (x / 16.0).reshape(n, 1, 8, 8)


def test_load_student_from_run_dir_matches_the_report(runs) -> None:
    from distill.deploy import load_run_data
    from distill.engine.evaluate import accuracy

    run = runs["mlp"]
    model = load_student(run)
    assert not model.training
    report = json.loads((run / "report.json").read_text())
    assert report["dataset"]["input_shape"] == [1, 8, 8]
    data = load_run_data(load_recipe(run / "config.yaml"))
    acc = accuracy(model, torch.utils.data.DataLoader(data.test, batch_size=128), torch.device("cpu"))
    assert acc == pytest.approx(report["models"]["distilled"]["accuracy"], abs=1e-6)
    assert acc > 0.7  # the int8 tests below need a student that learnt something


def test_safetensors_round_trip_identical_logits(runs, tmp_path) -> None:
    run = runs["mlp"]
    meta = export_run(run, "safetensors", out=tmp_path / "a" / "student.safetensors")
    assert meta["architecture"] == {"name": "mlp", "kwargs": {"hidden": [32]}}
    assert meta["input_shape"] == [1, 8, 8] and meta["num_classes"] == 10
    side = json.loads((tmp_path / "a" / "student.safetensors.json").read_text())
    assert side["architecture"] == meta["architecture"]
    # The file alone is enough: move it away from the run directory and its JSON.
    alone = tmp_path / "elsewhere.safetensors"
    shutil.move(tmp_path / "a" / "student.safetensors", alone)
    x = _test_batch()
    loaded = load_student(alone)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(x), load_student(run)(x))


def test_input_shape_falls_back_to_the_dataset(runs, tmp_path) -> None:
    run = tmp_path / "old-run"
    shutil.copytree(runs["mlp"], run)
    report = json.loads((run / "report.json").read_text())
    del report["dataset"]["input_shape"]  # a run written before the report recorded it
    (run / "report.json").write_text(json.dumps(report))
    meta = export_run(run, "safetensors")
    assert meta["input_shape"] == [1, 8, 8]
    assert (run / "export" / "student.safetensors").is_file()


def test_onnx_matches_pytorch(runs) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from distill.compress import onnx_session

    run = runs["cnn"]
    meta = export_run(run, "onnx")
    path = run / "export" / "student.onnx"
    assert meta["path"] == str(path)
    check = json.loads((run / "export" / "student.onnx.json").read_text())["onnx"]["check"]
    assert check["examples"] == 450
    assert check["max_abs_diff"] <= 1e-4
    assert check["agreement"] == 1.0
    # Independently of the export's own check, and at batch sizes other than the traced one.
    session, model = onnx_session(path), load_student(run)
    for n in (1, 5):
        x = _test_batch(n)
        got = torch.from_numpy(session.run(None, {"inputs": x.numpy()})[0])
        with torch.no_grad():
            assert (got - model(x)).abs().max() <= 1e-4


@pytest.mark.parametrize("kind, mode, int8_op", [("mlp", "dynamic", "MatMulInteger"),
                                                 ("cnn", "static-qdq", "QuantizeLinear")])
def test_int8_onnx_runs_and_keeps_accuracy(runs, kind, mode, int8_op) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from distill.compress import OnnxModule, onnx_session
    from distill.deploy import load_run_data
    from distill.engine.evaluate import accuracy

    run = runs[kind]
    meta = export_run(run, "onnx", int8=True)
    path = run / "export" / "student.int8.onnx"
    assert meta["onnx"]["int8"]["mode"] == mode
    assert int8_op in {n.op_type for n in onnx.load(str(path)).graph.node}  # really quantized, not a float copy
    check = meta["onnx"]["check"]
    assert check["accuracy_onnx"] >= check["accuracy_pytorch"] - INT8_TOLERANCE
    # Recomputed here through the engine's own accuracy, not the export's numbers.
    data = load_run_data(load_recipe(run / "config.yaml"))
    # Same batches as the export's check: dynamic int8 scales activations per call, so results depend on the batch.
    loader = torch.utils.data.DataLoader(data.test, batch_size=check["batch_size"])
    cpu = torch.device("cpu")
    acc_int8 = accuracy(OnnxModule(onnx_session(path)), loader, cpu)
    assert acc_int8 == pytest.approx(check["accuracy_onnx"], abs=1e-6)
    assert acc_int8 >= accuracy(load_student(run), loader, cpu) - INT8_TOLERANCE


def test_cli_export_prints_the_check(runs, capsys) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = runs["mlp"].parent / "cli.onnx"
    code, stdout, _ = cli(["export", str(runs["mlp"]), "--format", "onnx", "--out", str(out)], capsys)
    assert code == 0
    assert out.is_file() and (out.parent / "cli.onnx.json").is_file()
    assert "max |Δlogit|" in stdout and "450 test examples" in stdout


# --- bad input: one line, exit 2, nothing written --------------------------------------------------------------


def _assert_refused(code: int, err: str, fragment: str) -> None:
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert fragment in err


def test_unsupported_format(runs, capsys) -> None:
    run = tmp = runs["mlp"].parent / "fmt-run"
    shutil.copytree(runs["mlp"], tmp, ignore=shutil.ignore_patterns("export"))
    code, _, err = cli(["export", str(run), "--format", "tflite"], capsys)
    _assert_refused(code, err, "unsupported export format 'tflite'")
    code, _, err = cli(["export", str(run), "--format", "safetensor"], capsys)
    _assert_refused(code, err, "did you mean 'safetensors'")
    code, _, err = cli(["export", str(run), "--int8"], capsys)  # safetensors has no int8
    _assert_refused(code, err, "--format onnx")
    assert not (run / "export").exists()


def test_run_dir_without_student(runs, tmp_path, capsys) -> None:
    run = tmp_path / "unfinished"
    run.mkdir()
    shutil.copy(runs["mlp"] / "config.yaml", run / "config.yaml")
    code, _, err = cli(["export", str(run), "--format", "onnx"], capsys)
    _assert_refused(code, err, "has no student.safetensors")
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]
    with pytest.raises(DistillError, match="has no student.safetensors"):
        load_student(run)
    code, _, err = cli(["export", str(tmp_path / "nowhere")], capsys)
    _assert_refused(code, err, "not found")


def test_int8_without_quantizable_layers(tmp_path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    run = _run(tmp_path, "elementwise", "student.name=factories:elementwise", "student.kwargs={}",
               "train.max_steps=3", "train.epochs=1")
    before = sorted(p.name for p in run.iterdir())
    capsys.readouterr()  # what the run printed (its teacher diagnostics) is not the export's output
    code, _, err = cli(["export", str(run), "--format", "onnx", "--int8"], capsys)
    _assert_refused(code, err, "nothing to quantize")
    assert sorted(p.name for p in run.iterdir()) == before  # no export/ folder, no partial files


def test_load_student_refuses_files_it_cannot_rebuild(runs, tmp_path) -> None:
    with pytest.raises(DistillError, match="no distill metadata"):
        load_student(runs["mlp"] / "student.safetensors")  # plain weights: no architecture inside
    fake = tmp_path / "x.onnx"
    fake.write_bytes(b"not onnx")
    with pytest.raises(DistillError, match="onnxruntime.InferenceSession"):
        load_student(fake)
    with pytest.raises(DistillError, match="not found"):
        load_student(tmp_path / "missing.safetensors")

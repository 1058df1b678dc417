"""End to end through the CLI (in-process): run directory contract, report, and user errors."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from conftest import RECIPES, run_cli

from distill.cli import main

KEYS = {"accuracy", "params", "size_bytes", "latency_ms_p50", "latency_ms_p95", "throughput_per_s", "agreement",
        "kl_to_teacher", "ece"}



@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from conftest import TINY

    out = tmp_path_factory.mktemp("runs") / "tiny"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(["run", str(RECIPES / "digits.yaml"), "--out", str(out), "--no-progress", *sum((["--set", s] for s in TINY), [])])
    return out, buf.getvalue()


def test_run_directory_contract(tiny_run) -> None:
    out, stdout = tiny_run
    for name in ("config.yaml", "metrics.jsonl", "student.safetensors", "report.json", "report.html", "status.json"):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "teacher.safetensors").is_file()
    assert (out / "plots" / "temperature_explorer.png").is_file()
    assert json.loads((out / "status.json").read_text())["status"] == "complete"
    report = json.loads((out / "report.json").read_text())
    assert set(report["models"]) == {"teacher", "scratch", "distilled"}
    for name, m in report["models"].items():
        assert KEYS <= set(m), name
    assert report["models"]["teacher"]["agreement"] == 1.0
    assert report["models"]["distilled"]["params"] < report["models"]["teacher"]["params"]
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["train"]["max_steps"] == 3 and resolved["distill"]["temperature"] == 2.0
    phases = {json.loads(l)["phase"] for l in (out / "metrics.jsonl").read_text().splitlines()}
    assert phases == {"teacher", "scratch", "distilled"}
    assert "report.html" in stdout and "distilled" in stdout


def test_report_is_self_contained(tiny_run) -> None:
    out, _ = tiny_run
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4
    assert not re.search(r"""(src|href)=["']https?://""", html)
    assert "Why temperature?" in html and "student trained alone" in html


def test_report_command_rebuilds(tiny_run, capsys) -> None:
    out, _ = tiny_run
    (out / "report.html").unlink()
    code, stdout, _ = run_cli(["report", str(out)], capsys)
    assert code == 0 and (out / "report.html").is_file()


def test_existing_run_dir_needs_overwrite(tiny_run, capsys) -> None:
    out, _ = tiny_run
    code, _, err = run_cli(["run", str(RECIPES / "digits.yaml"), "--out", str(out)], capsys)
    assert code == 2 and "--overwrite" in err


@pytest.mark.parametrize(
    "sets,fragment",
    [
        (["distill.tempreture=2"], "unknown key"),
        (["train.epochs=abc"], "train.epochs"),
        (["teacher.name=resnet9000"], "unknown model 'resnet9000'"),
        (["data.name=digitz"], "did you mean 'digits'"),
        (["student.name=no_such_pkg.models:net"], "cannot import module"),
        (["data.name=factories:blobs", "teacher.name=factories:linear", "teacher.kwargs={}",
          "student.name=factories:linear", "student.kwargs={out_features: 4}"], "teacher predicts 3 classes but student predicts 4"),
        (["teacher.weights=/nonexistent/teacher.safetensors"], "not found"),
        (["data.batch_size=100000"], "larger than the training set"),
    ],
)
def test_user_errors_exit_2_with_one_line(sets, fragment, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    args = ["run", str(RECIPES / "digits.yaml"), "--out", str(out), "--no-progress"]
    for s in sets:
        args += ["--set", s]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert fragment in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()  # nothing half-written


def test_missing_recipe_file(tmp_path, capsys) -> None:
    code, _, err = run_cli(["run", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "not found" in err


def test_report_on_non_run(tmp_path, capsys) -> None:
    code, _, err = run_cli(["report", str(tmp_path)], capsys)
    assert code == 2 and "report.json" in err


def test_list_describes_every_registered_entry(capsys) -> None:
    from distill.config import builtin_recipes
    from distill.data import DATASETS
    from distill.methods import METHODS
    from distill.models import MODELS

    code, out, _ = run_cli(["list"], capsys)
    assert code == 0
    rows = {m.group(1): m.group(2).strip() for m in re.finditer(r"│ (\S+)\s+│ (.*?)│", out)}
    for name in [*METHODS, *MODELS, *DATASETS, *builtin_recipes()]:
        assert len(rows.get(name, "")) > 15, (name, rows.get(name))
    assert rows["kd"].startswith("Hinton et al. 2015")  # a whole first sentence, not cut at "et al."
    assert rows["scratch"] == "The student trained alone: cross-entropy on labels, no teacher."


def test_built_in_recipe_by_name(capsys) -> None:
    from distill.recipe import load_recipe

    assert load_recipe("digits") == load_recipe(RECIPES / "digits.yaml")
    assert load_recipe("fashion-mnist.yaml").name == "fashion-mnist"
    code, _, err = run_cli(["run", "digitz", "--no-progress"], capsys)
    assert code == 2 and "did you mean 'digits'" in err and err.count("\n") == 1

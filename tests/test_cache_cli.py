"""`distill cache` and `distill run` with `distill.cache`, through the CLI: build, reuse, refuse stale, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from distill.engine.io import save_weights
from distill.pipeline import prepare
from distill.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "src" / "distill" / "recipes"

AUG = ["augment.views=2", "augment.crop_padding=1", "augment.mix=cutmix"]


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory) -> Path:
    tiny = ["teacher.kwargs.hidden=[32]", "student.kwargs.hidden=[8]"]
    recipe = load_recipe(RECIPES / "digits.yaml", tiny)
    path = tmp_path_factory.mktemp("w") / "teacher.safetensors"
    save_weights(prepare(recipe).teacher, path)
    return path


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code, out, err = run_cli(argv, capsys)
    return code, out + err


def test_cache_then_run_without_teacher_forward(tmp_path, tiny_overrides, teacher_weights, capsys, monkeypatch) -> None:
    sets = [a for s in [*tiny_overrides, f"teacher.weights={teacher_weights}", *AUG] for a in ("--set", s)]
    recipe = str(RECIPES / "digits.yaml")
    cache = tmp_path / "cache"
    code, out = _run(["cache", recipe, *sets, "--out", str(cache)], capsys)
    assert code == 0, out
    assert "bytes/example" in out and "KL(live||cached)" in out
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["views"] == 2 and manifest["fidelity"]["top1_agreement"] == 1.0
    code, out = _run(["cache", recipe, *sets, "--out", str(cache)], capsys)
    assert code == 0 and "up to date" in out

    import distill.teachers.live as live

    def no_teacher(self, batch):
        raise AssertionError("a live teacher ran although distill.cache was set")

    monkeypatch.setattr(live.LiveTeacher, "__call__", no_teacher)
    run = tmp_path / "run"
    code, out = _run(["run", recipe, *sets, "--set", f"distill.cache={cache}", "--out", str(run), "--no-progress"], capsys)
    assert code == 0, out
    assert json.loads((run / "status.json").read_text())["status"] == "complete"
    monkeypatch.undo()

    # another augmentation: refused before any run directory is made, one line, exit 2
    stale = ["--set", "augment.crop_padding=2", "--set", f"distill.cache={cache}"]
    code, out = _run(["run", recipe, *sets, *stale, "--out", str(tmp_path / "run2"), "--no-progress"], capsys)
    assert code == 2 and "stale" in out and "--rebuild" in out and len(out.strip().splitlines()) == 1
    assert not (tmp_path / "run2").exists()
    code, out = _run(["cache", recipe, *sets, "--set", "augment.crop_padding=2", "--out", str(cache)], capsys)
    assert code == 2 and "stale" in out
    code, out = _run(["cache", recipe, *sets, "--set", "augment.crop_padding=2", "--out", str(cache), "--rebuild",
                      "--storage", "topk", "--topk", "3"], capsys)
    assert code == 0 and "topk" in out


def test_cache_needs_teacher_weights(tmp_path, tiny_overrides, capsys) -> None:
    sets = [a for s in tiny_overrides for a in ("--set", s)]
    code, out = _run(["cache", str(RECIPES / "digits.yaml"), *sets, "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and "teacher.weights" in out
    code, out = _run(["run", str(RECIPES / "digits.yaml"), *sets, "--set", "distill.cache=nowhere",
                      "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "teacher.weights" in out and not (tmp_path / "r").exists()


def test_function_matching_recipe_validates() -> None:
    r = load_recipe(RECIPES / "digits-function-matching.yaml")
    assert r.augment.mix == "mixup" and r.augment.views > 1 and r.distill.alpha == 1.0

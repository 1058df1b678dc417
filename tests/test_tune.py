"""distill tune: a 2-trial search writes a recipe `distill run` accepts; resume; bad input is one line, exit 2,
and no finished trial is lost."""

from __future__ import annotations

import json

import pytest
from conftest import RECIPES, TINY
from conftest import run_cli as cli

from distill.cli import main
from distill.recipe import load_recipe
from distill.tune_space import parse_budget, parse_space

pytest.importorskip("optuna")
SETS = sum((["--set", s] for s in TINY), [])



@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "digits"
    main(["tune", str(RECIPES / "digits.yaml"), "--budget", "10m", "--trials", "2", "--out", str(out), "--no-progress",
          *SETS])
    return out


def test_two_trials_write_a_runnable_recipe(tuned) -> None:
    summary = json.loads((tuned / "tune.json").read_text())
    assert len(summary["trials"]) == 2 and len(summary["baseline_trials"]) == 2
    assert summary["best"]["value"] is not None and set(summary["baseline"]["params"]) == {"lr"}
    recipe = load_recipe(tuned / "best.yaml")  # valid, and holds the best trial's settings
    best = summary["best"]["params"]
    assert recipe.distill.method == best["method"] and recipe.train.lr == pytest.approx(best["lr"])
    assert recipe.distill.temperature == pytest.approx(best["temperature"])
    assert recipe.teacher.weights and (tuned / "teacher.safetensors").is_file()  # the tune's teacher, reused by a run
    page = (tuned / "tune.html").read_text()
    assert "student trained alone" in page and "data:image/png;base64," in page


def test_resume_adds_trials_and_keeps_the_old_ones(tuned, capsys) -> None:
    before = json.loads((tuned / "tune.json").read_text())["trials"]
    code, out, _ = cli(["tune", str(RECIPES / "digits.yaml"), "--budget", "10m", "--trials", "3", "--out", str(tuned),
                        "--no-progress", *SETS], capsys)
    after = json.loads((tuned / "tune.json").read_text())["trials"]
    assert code == 0 and "best recipe:" in out
    assert len(after) == 3 and after[:2] == before


@pytest.mark.parametrize(
    "extra,fragment",
    [
        (["--space", "temprature"], "unknown search-space key 'temprature' (did you mean 'temperature'?)"),
        (["--space", "lr"], "different search space"),
        (["--set", "seed=3"], "different recipe"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_lost(tuned, extra, fragment, capsys) -> None:
    before = json.loads((tuned / "tune.json").read_text())["trials"]
    args = ["tune", str(RECIPES / "digits.yaml"), "--out", str(tuned), "--no-progress", "--budget", "10m", *SETS, *extra]
    code, _, err = cli(args, capsys)
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1
    assert json.loads((tuned / "tune.json").read_text())["trials"] == before


def test_budget_that_cannot_fit_a_trial_leaves_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "t"
    code, _, err = cli(["tune", str(RECIPES / "digits.yaml"), "--budget", "0.01s", "--out", str(out), "--no-progress",
                        *SETS], capsys)
    assert code == 2 and "cannot fit one trial" in err and not out.exists()


def test_recipe_without_validation_split(tmp_path, capsys) -> None:
    code, _, err = cli(["tune", str(RECIPES / "digits.yaml"), "--budget", "1m", "--out", str(tmp_path / "t"),
                        "--no-progress", *SETS, "--set", "data.kwargs={val_fraction: 0.01}"], capsys)
    assert code == 2 and "validation split" in err and len(err.strip().splitlines()) == 1


def test_parsers() -> None:
    assert parse_budget("20m") == 1200 and parse_budget("1h30m") == 5400 and parse_budget("90s") == 90
    assert parse_space(["lr=1e-4:1e-2", "method=kd"]) == {"lr": ("log", (1e-4, 1e-2)), "method": ("choice", ["kd"])}
    for bad in (["budget"], ["alpha=0:2"], ["method=fitnet"]):
        with pytest.raises(Exception):
            parse_space(bad)
    with pytest.raises(Exception):
        parse_budget("soon")


@pytest.mark.parametrize("sets", [["distill.method=born_again", "distill.alpha=null"],
                                  ["distill.method=ensemble", "distill.options={teachers: [{name: mlp}]}"]])
def test_methods_a_trial_cannot_honour_are_refused_before_training(sets, tmp_path, capsys) -> None:
    """A trial trains one phase from one teacher: born-again generations or an ensemble would be scored as plain KD."""
    out = tmp_path / "t"
    args = ["tune", str(RECIPES / "digits.yaml"), "--budget", "10m", "--space", "lr", "--out", str(out),
            "--no-progress", *SETS, *sum((["--set", s] for s in sets), [])]
    code, _, err = cli(args, capsys)
    assert code == 2 and "one teacher in one phase" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_estimate_leaves_out_first_call_start_up(monkeypatch) -> None:
    """A process's first training steps pay one-off start-up costs; counted per step they made a 8 s trial look like
    205 s, so each search stopped with ~26% of its budget unspent (mnist-pretrained, 20m budget)."""
    import time
    from types import SimpleNamespace

    from distill import tune as tune_mod

    calls: list[int] = []

    def fake_trial(s, recipe, distilled, report):
        calls.append(recipe.train.max_steps)
        time.sleep(0.5 if len(calls) == 1 else 0.005)  # the first call in a process is the slow one
        return 0.5

    monkeypatch.setattr(tune_mod, "_train_trial", fake_trial)
    recipe = load_recipe(RECIPES / "digits.yaml", ["train.epochs=2"])
    s = SimpleNamespace(recipe=recipe, prepared=SimpleNamespace(data=SimpleNamespace(train=range(640))))
    steps = 2 * 640 // recipe.data.batch_size
    estimate = tune_mod._estimate(s)
    assert len(calls) == 2 and estimate < 0.02 * steps  # ~0.001 s/step timed; the start-up call would give 0.1

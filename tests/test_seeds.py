"""`train.seeds` (issue 11 item 3): students per seed in one run directory, mean ± 95% t-interval per column, the
paired gain and its verdict; resume across seeds. Statistics are checked against scipy's own t-tests."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest
from conftest import RECIPES, TINY
from safetensors.torch import load_file
from scipy import stats as sps

from distill.cli import main
from distill.report import verdict
from distill.report.stats import aggregate, paired_gain, t_interval

SEEDS = [3, 5]


def test_t_interval_matches_scipy() -> None:
    x = [0.81, 0.84, 0.80, 0.86]
    got = t_interval(x)
    lo, hi = sps.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
    assert got["n"] == 4 and got["lo"] == pytest.approx(lo) and got["hi"] == pytest.approx(hi)
    assert t_interval([1, 2, 3])["half"] == pytest.approx(4.302652729911275 / 3**0.5)  # t(0.975, 2) · s / √n
    one = t_interval([0.5])
    assert one["mean"] == 0.5 and one["half"] is None


def test_paired_gain_matches_scipy_ttest_rel() -> None:
    treated, control = [0.90, 0.88, 0.91, 0.87], [0.86, 0.87, 0.88, 0.85]
    got = paired_gain(treated, control)
    ref = sps.ttest_rel(treated, control)
    assert got["t"] == pytest.approx(ref.statistic) and got["p"] == pytest.approx(ref.pvalue)
    assert got["per_seed"] == pytest.approx([0.04, 0.01, 0.03, 0.02])
    assert got["significant"] is True and got["lo"] > 0
    # an unpaired test would call the same numbers insignificant: the pairing is what the test is about
    assert sps.ttest_ind(treated, control).pvalue > 0.05
    noisy = paired_gain([0.90, 0.85, 0.91], [0.88, 0.88, 0.88])
    assert noisy["significant"] is False and noisy["lo"] < 0 < noisy["hi"]
    assert paired_gain([0.9], [0.8])["significant"] is None


def test_aggregate_means_intervals_and_pooled_reliability() -> None:
    table = {"bin_lower": [0, 0.5], "bin_upper": [0.5, 1], "accuracy": [0.2, 1.0], "confidence": [0.3, 0.9], "count": [1, 3]}
    other = {**table, "accuracy": [0.4, 0.5], "count": [3, 1]}
    rows = {0: {"accuracy": 0.8, "params": 610, "reliability": table}, 1: {"accuracy": 0.9, "params": 610, "reliability": other}}
    row = aggregate(rows)
    assert row["accuracy"] == pytest.approx(0.85) and row["params"] == 610 and isinstance(row["params"], int)
    assert row["ci95"]["accuracy"] == pytest.approx(list(sps.t.interval(0.95, 1, loc=0.85, scale=sps.sem([0.8, 0.9]))))
    assert row["n_seeds"] == 2 and set(row["per_seed"]) == {"0", "1"} and "reliability" not in row["per_seed"]["0"]
    assert row["reliability"]["count"] == [4, 4]
    assert row["reliability"]["accuracy"] == pytest.approx([(0.2 * 1 + 0.4 * 3) / 4, (1.0 * 3 + 0.5 * 1) / 4])


def _gain(mean: float, lo: float, hi: float, p: float) -> dict:
    return {"n": 3, "mean": mean, "lo": lo, "hi": hi, "p": p, "significant": p < 0.05}


def test_verdict_is_computed_from_the_paired_gain() -> None:
    models = {"scratch": {"accuracy": 0.80}, "distilled": {"accuracy": 0.82}}
    good = verdict(models, 450, 0, gain=_gain(0.02, 0.01, 0.03, 0.01))
    assert good.startswith("Over 3 seeds, distillation beat") and "+2.00 points" in good and "significant" in good
    assert "CI +1.00 to +3.00" in good and "p = 0.01" in good
    unsure = verdict(models, 450, 0, gain=_gain(0.02, -0.01, 0.05, 0.2))
    assert "did not significantly change" in unsure and "includes 0" in unsure
    worse = verdict({"scratch": {"accuracy": 0.82}, "distilled": {"accuracy": 0.80}}, 450, 0,
                    gain=_gain(-0.02, -0.03, -0.01, 0.01))
    assert "did NOT beat" in worse and "significantly worse" in worse
    assert "on seed 0" in verdict(models, 450, 0)  # one seed: the single-draw sentence, as before


def _run(out, *extra: str) -> None:
    sets = [*TINY, f"train.seeds=[{', '.join(map(str, SEEDS))}]"]
    with contextlib.redirect_stdout(io.StringIO()):
        main(["run", str(RECIPES / "digits.yaml"), "--out", str(out), "--no-progress",
              *sum((["--set", s] for s in sets), []), *extra])


@pytest.fixture(scope="module")
def seeded_run(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("seeds") / "run"
    _run(out)
    return out


def test_students_train_per_seed_in_one_run(seeded_run) -> None:
    out = seeded_run
    phases = {json.loads(line)["phase"] for line in (out / "metrics.jsonl").read_text().splitlines()}
    assert phases == {"teacher", "scratch@3", "distilled@3", "scratch@5", "distilled@5"}  # the teacher once
    ckpt = out / "checkpoints"
    a, b = load_file(ckpt / "scratch@3.safetensors"), load_file(ckpt / "scratch@5.safetensors")
    assert any(not np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)  # the seed reaches the student
    assert (out / "student.safetensors").read_bytes() == (ckpt / "distilled@3.safetensors").read_bytes()

    report = json.loads((out / "report.json").read_text())
    assert report["seeds"] == SEEDS and report["recipe"]["seeds"] == SEEDS and set(report["models"]) == {"teacher", "scratch", "distilled"}
    scratch, distilled = report["models"]["scratch"], report["models"]["distilled"]
    for row in (scratch, distilled):
        per = [row["per_seed"][str(s)] for s in SEEDS]
        for key in ("accuracy", "agreement", "kl_to_teacher", "ece", "latency_ms_p50", "throughput_per_s"):
            assert row[key] == pytest.approx(np.mean([p[key] for p in per])), key
            assert key in row["ci95"], key
    gain = report["gain"]
    assert gain["per_seed"] == pytest.approx([distilled["per_seed"][str(s)]["accuracy"] - scratch["per_seed"][str(s)]["accuracy"]
                                              for s in SEEDS])
    html = (out / "report.html").read_text()
    assert "Over 2 seeds" in html and "<h2>Seeds</h2>" in html and " ± " in html


def test_resume_across_seeds_is_bit_identical(seeded_run, tmp_path) -> None:
    """Kill-free resume: the last seed's distilled phase and the report are gone; a resume restores the four finished
    phases and retrains only that one, to the same bytes."""
    out = tmp_path / "run"
    shutil.copytree(seeded_run, out)
    for name in ("checkpoints/distilled@5-final", "checkpoints/distilled@5.safetensors", "report.json", "report.html"):
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    _run(out, "--resume")
    events = {r["phase"]: r["event"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if r.get("event") in ("resumed", "phase_restored")}
    assert events == {p: "phase_restored" for p in ("teacher", "scratch@3", "distilled@3", "scratch@5")}
    name = "checkpoints/distilled@5.safetensors"
    assert (out / name).read_bytes() == (seeded_run / name).read_bytes()
    assert json.loads((out / "report.json").read_text())["gain"] == json.loads((seeded_run / "report.json").read_text())["gain"]

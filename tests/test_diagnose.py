"""Teacher diagnostics: values against numpy on logits we construct, the warnings, and their place in a run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import RECIPES, TINY

from distill.cli import main
from distill.diagnose import (
    ONE_HOT_P,
    auto_temperature,
    diagnose_logits,
    softened_stats,
)
from distill.errors import DistillWarning


def _np_stats(z: np.ndarray, t: float) -> tuple[float, float]:
    z = z / t
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    h = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(1)
    return float(h.mean()), float((p.max(1) > ONE_HOT_P).mean())


def test_entropy_and_one_hot_share_match_numpy() -> None:
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(0, 40, (30, 10)), rng.normal(0, 0.5, (20, 10))])  # 30 huge rows, 20 soft ones
    for t in (1.0, 2.0, 8.0, 50.0):
        h, share = softened_stats(torch.tensor(z), t)
        h_np, share_np = _np_stats(z, t)
        assert h == pytest.approx(h_np, abs=1e-9) and share == pytest.approx(share_np)
    assert 0.3 < softened_stats(torch.tensor(z), 1.0)[1] <= 0.6  # most of the 30 huge rows are one-hot at T=1


def test_scale_accuracy_and_rows() -> None:
    z = torch.tensor([[10.0, 0.0, -10.0], [0.0, 3.0, 0.0]])
    d = diagnose_logits(z, torch.tensor([0, 2]), temperatures=[1, 4], temperature=2)
    assert d["logit_std"] == pytest.approx(float(z.double().std(1).mean()))
    assert d["logit_range"] == pytest.approx(11.5)
    assert d["accuracy"] == 0.5 and d["labelled"] == 2
    assert [r["temperature"] for r in d["per_temperature"]] == [1.0, 2.0, 4.0]  # the chosen T is added
    d = diagnose_logits(z, torch.tensor([-100, -100]), temperatures=[1], temperature=1)
    assert d["accuracy"] is None and d["labelled"] == 0


def test_warnings_one_hot_uniform_and_fine() -> None:
    big = torch.randn(64, 10, generator=torch.Generator().manual_seed(0)) * 60
    d = diagnose_logits(big, None, temperatures=[1, 4], temperature=2)
    assert len(d["warnings"]) == 1 and d["warnings"][0].startswith("soft targets are one-hot: at T=2")
    assert "standardize=true" in d["warnings"][0] and "\n" not in d["warnings"][0]
    flat = diagnose_logits(big / 60, None, temperatures=[1], temperature=50)
    assert len(flat["warnings"]) == 1 and "near-uniform" in flat["warnings"][0] and "lower distill.temperature" in flat["warnings"][0]
    assert diagnose_logits(big / 60 * 3, None, temperatures=[1], temperature=2)["warnings"] == []
    assert diagnose_logits(big, None, temperatures=[1], temperature=2, alpha=0.0)["warnings"] == []  # no soft term
    # standardised, the same huge teacher is not one-hot at all
    assert diagnose_logits(big, None, temperatures=[1], temperature=2, standardize=True)["chosen_one_hot_share"] == 0


def test_auto_temperature_leaves_targets_informative() -> None:
    big = torch.randn(256, 10, generator=torch.Generator().manual_seed(1)) * 30
    t = auto_temperature(big)
    h, share = softened_stats(big, t)
    assert share <= 0.05 and t > 4
    assert auto_temperature(big, standardize=True) == 1.0  # standardised rows are soft at T=1 already
    assert auto_temperature(big / 30) <= 2


def test_run_prints_warning_and_records_diagnostics(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    args = ["run", str(RECIPES / "digits.yaml"), "--out", str(out), "--no-progress", "--set", "distill.temperature=1000",
            "--set", "distill.options.standardize=false"]
    with pytest.warns(DistillWarning) as caught:  # the CLI prints each as one `warning: ...` line
        main([*args, *sum((["--set", s] for s in TINY), [])])
    lines = [str(w.message) for w in caught if str(w.message).startswith("soft targets are near-uniform")]
    assert len(lines) == 1 and "T=1000" in lines[0] and "\n" not in lines[0]
    report = json.loads((out / "report.json").read_text())
    d = report["diagnostics"]
    assert d["temperature"] == 1000 and d["sample"] > 0 and d["warnings"] and 0 <= d["accuracy"] <= 1
    assert report["explorer"]["chosen_temperature"] == 1000
    page = (out / "report.html").read_text()
    assert "Teacher diagnostics" in page and "near-uniform" in page
    # distill check on the trained teacher; temperature: auto resolves from the diagnostics
    weights = out / "checkpoints" / "teacher.safetensors"
    main(["check", str(RECIPES / "digits.yaml"), "--set", f"teacher.weights={weights}", "--set", "distill.temperature=auto",
          "--set", "teacher.kwargs.hidden=[32]"])
    printed = capsys.readouterr().out
    assert "one-hot rows" in printed and "(auto)" in printed


def test_check_needs_a_trained_teacher(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["check", str(RECIPES / "digits.yaml")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "needs a trained teacher" in err and len(err.strip().splitlines()) == 1


def test_one_hot_warning_for_two_classes_says_raise_t_not_standardize() -> None:
    """Two standardised logits are always (+0.71, -0.71): recommending standardize there would erase confidence."""
    z = torch.tensor([[40.0, -40.0], [-35.0, 35.0], [50.0, -10.0]])
    (two,) = diagnose_logits(z, None, temperatures=[1], temperature=1)["warnings"]
    assert "one-hot" in two and "raise distill.temperature" in two and "standardize" not in two
    three = diagnose_logits(torch.cat([z, z[:, :1] * 0], 1), None, temperatures=[1], temperature=1)["warnings"]
    assert "standardize=true" in three[0]

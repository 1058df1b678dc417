"""The report: reads only run artifacts (`config.yaml`, `metrics.jsonl`, `report.json`) and writes `report.html`
(one self-contained page, images inlined) and `plots/*.png`. It never imports the engine or runs a model."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from ..errors import DistillError
from . import plots
from .page import page


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read `metrics.jsonl`, skipping a torn last line (a killed writer)."""
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


# what the CLI table reads from every model row
REQUIRED = {"accuracy", "agreement", "kl_to_teacher", "ece", "params", "size_bytes", "latency_ms_p50", "latency_ms_p95"}


def load_report(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "report.json"
    if not path.is_file():
        raise DistillError(f"{str(path)!r} not found; pass a finished run directory (made by `distill run`)")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DistillError(f"{str(path)!r} is corrupt; re-run the recipe to rebuild it") from None
    models = report.get("models") if isinstance(report, dict) else None
    complete = isinstance(models, dict) and models and isinstance(report.get("dataset"), dict)
    if not complete or not all(isinstance(m, dict) and REQUIRED <= set(m) for m in models.values()):
        raise DistillError(f"{str(path)!r} is incomplete or from another version; re-run the recipe to rebuild it")
    return report


def verdict(models: dict[str, dict[str, Any]], test_size: int | None, seed: Any,
            gain: dict[str, Any] | None = None) -> str:
    """One honest sentence: did distillation beat the student trained alone, by how much, and how big is noise.
    `gain` (report.json's, from `train.seeds`): the paired per-seed gain, its 95% CI and p-value decide the sentence."""
    if "distilled" not in models or "scratch" not in models:
        return ""
    if gain and gain.get("n", 0) >= 2:
        return _verdict_over_seeds(models, gain)
    if models["distilled"].get("perplexity") is not None and models["scratch"].get("nll") is not None:
        return _lm_verdict(models["distilled"], models["scratch"], seed)
    d, s = models["distilled"].get("accuracy"), models["scratch"].get("accuracy")
    if d is None or s is None:
        return ""
    diff = 100 * (d - s)
    unit = f" One test example is {100 / test_size:.2f} points." if test_size else ""
    if abs(diff) < 1e-9:
        head = f"Distillation tied the student trained alone ({100 * d:.2f}% each)"
    elif diff > 0:
        head = f"Distillation beat the student trained alone by {diff:+.2f} points ({100 * d:.2f}% vs {100 * s:.2f}%)"
    else:
        head = f"Distillation did NOT beat the student trained alone: {diff:+.2f} points ({100 * d:.2f}% vs {100 * s:.2f}%)"
    return f"{head} on seed {seed}.{unit} A single seed is one draw; compare several before trusting a gap of a point or two."


def _lm_verdict(d: dict[str, Any], s: dict[str, Any], seed: Any) -> str:
    """task: causal_lm: held-out NLL per answer token, distilled vs alone (lower is better), with agreement and KL."""
    diff = d["nll"] - s["nll"]
    head = ("Distillation beat the student trained alone" if diff < 0 else
            "Distillation did NOT beat the student trained alone")
    return (f"{head} on held-out NLL: {d['nll']:.3f} vs {s['nll']:.3f} nats/token ({diff:+.3f}); agreement with the "
            f"teacher {100 * d.get('agreement', 0):.1f}% vs {100 * s.get('agreement', 0):.1f}%, KL(teacher ‖ student) "
            f"{d.get('kl_to_teacher', 0):.3f} vs {s.get('kl_to_teacher', 0):.3f}, on seed {seed}. A single seed is one "
            "draw.")


def _verdict_over_seeds(models: dict[str, dict[str, Any]], gain: dict[str, Any]) -> str:
    n, mean, lo, hi, p = gain["n"], 100 * gain["mean"], 100 * gain["lo"], 100 * gain["hi"], gain["p"]
    d, s = 100 * models["distilled"]["accuracy"], 100 * models["scratch"]["accuracy"]
    numbers = f"{mean:+.2f} points on average ({d:.2f}% vs {s:.2f}%; paired 95% CI {lo:+.2f} to {hi:+.2f}, p = {p:.3g})"
    if gain["significant"] and mean > 0:
        return f"Over {n} seeds, distillation beat the student trained alone by {numbers}: the gain is significant."
    if gain["significant"]:
        return f"Over {n} seeds, distillation did NOT beat the student trained alone: {numbers}; it is significantly worse."
    return (f"Over {n} seeds, distillation did not significantly change the student trained alone: {numbers}; "
            "the interval includes 0, so more seeds or a larger test set are needed to tell.")


def _png(fig: Any, path: Path) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plots.plt.close(fig)
    data = buf.getvalue()
    path.write_bytes(data)
    return base64.b64encode(data).decode("ascii")


def render(run_dir: str | Path) -> Path:
    """Write `plots/*.png` and `report.html` for a run directory; returns the HTML path."""
    run_dir = Path(run_dir)
    report = load_report(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl")
    config = (run_dir / "config.yaml").read_text(encoding="utf-8") if (run_dir / "config.yaml").exists() else ""
    models = report.get("models", {})
    plot_dir = run_dir / "plots"
    plot_dir.mkdir(exist_ok=True)
    images = {
        "curves": _png(plots.training_curves(records), plot_dir / "training_curves.png"),
        "tradeoffs": _png(plots.tradeoffs(models), plot_dir / "tradeoffs.png"),
        "reliability": _png(plots.reliability_diagrams(models), plot_dir / "reliability.png"),
    }
    if report.get("explorer", {}).get("examples"):
        explorer = {**report["explorer"], "per_temperature": report.get("diagnostics", {}).get("per_temperature", [])}
        images["explorer"] = _png(plots.temperature_explorer(explorer), plot_dir / "temperature_explorer.png")
    text = verdict(models, report.get("dataset", {}).get("test_size"), report.get("recipe", {}).get("seed"),
                   gain=report.get("gain"))
    out = run_dir / "report.html"
    tmp = run_dir / ".report.html.tmp"
    tmp.write_text(page(report, images, text, html.escape(config)), encoding="utf-8")
    tmp.replace(out)
    return out


__all__ = ["load_report", "render", "verdict"]

"""Matplotlib figures for the report. Each function takes plain data read from run artifacts and returns a Figure."""

from __future__ import annotations

from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

COLORS = {"teacher": "#4c72b0", "scratch": "#dd8452", "distilled": "#55a868"}


def color(name: str, i: int = 0) -> str:
    """A model's colour; a per-seed phase (`scratch@1`) takes its model's."""
    return COLORS.get(name.split("@")[0], plt.get_cmap("tab10")(i % 10))


def training_curves(records: list[dict[str, Any]]) -> Figure:
    """Loss per logged step and validation accuracy per epoch, one line per phase."""
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.6))
    phases = list(dict.fromkeys(r["phase"] for r in records if "phase" in r))
    for i, phase in enumerate(phases):
        rows = [r for r in records if r.get("phase") == phase]
        steps = [r for r in rows if r.get("loss") is not None]
        if steps:
            ax_loss.plot([r["step"] for r in steps], [r["loss"] for r in steps], label=phase, color=color(phase, i))
        vals = [r for r in rows if r.get("val_accuracy") is not None]
        if vals:
            ax_val.plot([r["epoch"] + 1 for r in vals], [100 * r["val_accuracy"] for r in vals], "o-",
                        ms=3, label=phase, color=color(phase, i))
    ax_loss.set(xlabel="step", ylabel="training loss", title="Training loss (each phase's own objective)")
    ax_loss.set_yscale("log")
    ax_val.set(xlabel="epoch", ylabel="validation accuracy (%)", title="Validation accuracy")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


MARKERS = "osD^vP*Xhp<>"


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both cost (x, lower is better) and accuracy (y, higher is better),
    sorted by cost: the curve a user picks from."""
    front, best = [], float("-inf")
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            front.append((x, y))
            best = y
    return front


def tradeoffs(models: dict[str, dict[str, Any]]) -> Figure:
    """Pareto plots: accuracy against size on disk and against batch-1 latency (log scales), every model and
    compressed variant, 95% CI error bars over seeds where there are several, the Pareto front dashed."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    handles = {}
    for ax, key, label, scale in ((axes[0], "size_bytes", "size on disk, KiB (log scale)", 1024),
                                  (axes[1], "latency_ms_p50", "latency p50, batch 1, ms (log scale)", 1)):
        points = []
        for i, (name, m) in enumerate(models.items()):
            if not m.get(key) or m.get("accuracy") is None:
                continue
            ci = m.get("ci95") or {}
            x, y = m[key] / scale, 100 * m["accuracy"]
            yerr = _err(ci.get("accuracy"), m["accuracy"], 100)
            xerr = _err(ci.get(key), m[key], 1 / scale)
            if yerr is not None or xerr is not None:  # 95% CI over seeds
                ax.errorbar(x, y, yerr=yerr, xerr=xerr, fmt="none", ecolor=color(name, i), capsize=4, zorder=2)
            handles[name] = ax.scatter(x, y, s=70, color=color(name, i), marker=MARKERS[i % len(MARKERS)], zorder=3,
                                       label=name)
            points.append((x, y))
        front = pareto_front(points)
        if len(front) > 1:
            ax.step(*zip(*front), where="post", ls="--", color="#888", lw=1, zorder=1)
        ax.set(xlabel=label, ylabel="test accuracy (%)")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # 1-2-5 ticks
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3)
    axes[0].set_title("Accuracy vs size on disk")
    axes[1].set_title("Accuracy vs latency (dashed: Pareto front)")
    fig.legend(list(handles.values()), list(handles), loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.84, 1))
    return fig


def _err(ci: list[float] | None, mean: float, scale: float) -> list[list[float]] | None:
    """An asymmetric error bar `[[below], [above]]` from a `[lo, hi]` interval, or None."""
    if not ci:
        return None
    return [[scale * max(0.0, mean - ci[0])], [scale * max(0.0, ci[1] - mean)]]


def reliability_diagrams(models: dict[str, dict[str, Any]]) -> Figure:
    """Per model: accuracy in each confidence bin against the diagonal of perfect calibration."""
    names = [n for n, m in models.items() if m.get("reliability")]
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(3.4 * max(1, len(names)), 3.4), squeeze=False)
    for i, (ax, name) in enumerate(zip(axes[0], names)):
        t = models[name]["reliability"]
        lo, hi = np.array(t["bin_lower"]), np.array(t["bin_upper"])
        acc, count = np.array(t["accuracy"]), np.array(t["count"])
        ax.bar(lo, np.where(count > 0, acc, 0), width=hi - lo, align="edge", color=color(name, i), alpha=0.8,
               edgecolor="white", label="accuracy")
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", title=f"{name}  (ECE {models[name]['ece']:.3f})")
        if i == 0:
            ax.set_ylabel("accuracy")
            ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max()
    e = np.exp(z)
    return e / e.sum()


def temperature_explorer(explorer: dict[str, Any]) -> Figure:
    """Rows: test examples (image when it has one); columns: the teacher's softmax(z / T) for each temperature."""
    temps, examples = list(explorer["temperatures"]), explorer["examples"]
    chosen = explorer.get("chosen_temperature")  # the run's T: its column is marked (added if not a candidate)
    if chosen is not None and all(abs(t - chosen) > 1e-9 for t in temps):
        temps = sorted(temps + [chosen])
    one_hot = {round(float(r["temperature"]), 6): r["one_hot_share"] for r in explorer.get("per_temperature", [])}
    has_image = any(e.get("image") is not None for e in examples)
    cols = len(temps) + int(has_image)
    fig, axes = plt.subplots(len(examples), cols, figsize=(2.1 * cols, 1.7 * len(examples)), squeeze=False)
    names = explorer.get("class_names") or []
    for r, ex in enumerate(examples):
        z = np.asarray(ex["teacher_logits"], dtype=np.float64)
        k = len(z)
        if has_image:
            ax = axes[r][0]
            if ex.get("image") is not None:
                ax.imshow(np.asarray(ex["image"]), cmap="gray_r")
            ax.set_title(f"label {names[ex['label']] if names and 0 <= ex['label'] < len(names) else ex['label']}", fontsize=8)
            ax.axis("off")
        for c, t in enumerate(temps):
            ax = axes[r][c + int(has_image)]
            p = softmax(z / t)
            bar_colors = ["#c44e52" if j == ex["label"] else "#4c72b0" for j in range(k)]
            ax.bar(range(k), p, color=bar_colors)
            ax.set_ylim(0, 1)
            ax.set_xticks(range(k) if k <= 12 else [])
            ax.tick_params(labelsize=6)
            entropy = float(-(p * np.log(np.clip(p, 1e-12, 1))).sum())
            mark = chosen is not None and abs(t - chosen) < 1e-9
            title = f"{'chosen ' if mark else ''}T={t:g}  H={entropy:.2f}"
            if r == 0 and round(float(t), 6) in one_hot:  # the share of one-hot rows over the diagnostics sample
                title = f"{title}\none-hot {100 * one_hot[round(float(t), 6)]:.0f}% of rows"
            ax.set_title(title, fontsize=8, color="#c44e52" if mark else "black", fontweight="bold" if mark else None)
            if mark:
                for side in ax.spines.values():
                    side.set_edgecolor("#c44e52")
                    side.set_linewidth(2)
    fig.suptitle("Teacher's distribution softmax(z / T): red = true class", fontsize=10)
    fig.tight_layout()
    return fig

"""`tune.html`: the trials of a `distill tune`, from its summary (`tune.json`) alone — score against each searched
parameter (finished trials in blue, pruned ones in grey at their last reported score), the tuned student-alone
baseline as a line, and the best settings."""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

from . import plots
from .page import CSS

plt = plots.plt


def _figure(summary: dict[str, Any]) -> str:
    keys = list(summary.get("space", {}))
    trials = summary.get("trials", [])
    base = (summary.get("baseline") or {}).get("value")
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(3.2 * max(1, len(keys)), 3.0), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for state, color in (("PRUNED", "#bbbbbb"), ("COMPLETE", "#4c72b0")):
            pts = [(t["params"][key], t["value"]) for t in trials
                   if t["state"] == state and key in t["params"] and t.get("value") is not None]
            if pts:
                xs = [str(x) if isinstance(x, (bool, str)) else x for x, _ in pts]
                ax.scatter(xs, [100 * v for _, v in pts], s=14, color=color, label=state.lower())
        if base is not None:
            ax.axhline(100 * base, color="#c44e52", linestyle="--", linewidth=1, label="student alone (tuned lr)")
        if summary["space"][key][0] == "log":
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel("val accuracy %")
        ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def tune_page(summary: dict[str, Any]) -> str:
    """One self-contained HTML page for a tune summary."""
    best, base = summary.get("best") or {}, summary.get("baseline") or {}
    trials = summary.get("trials", [])
    counts = {s: sum(t["state"] == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")}
    gap = ""
    if best.get("value") is not None and base.get("value") is not None:
        diff = 100 * (best["value"] - base["value"])
        gap = (f"The best distilled trial scored {100 * best['value']:.2f}% on the validation split, "
               f"{diff:+.2f} points against the student trained alone with the same budget on its learning rate "
               f"({100 * base['value']:.2f}% at lr {base['params'].get('lr', math.nan):.2g}).")
    rows = sorted((t for t in trials if t.get("value") is not None), key=lambda t: -t["value"])[:15]
    table = "<table><tr><th>trial</th><th>state</th><th>val accuracy</th><th>epochs</th><th>params</th></tr>" + "".join(
        f"<tr><td>{t['number']}</td><td>{t['state'].lower()}</td><td>{100 * t['value']:.2f}%</td><td>{t['epochs']}</td>"
        f"<td>{html.escape(', '.join(f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}' for k, v in t['params'].items()))}</td></tr>"
        for t in rows) + "</table>"
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.get("params", {}).items())
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>distill tune — {html.escape(summary.get('recipe', ''))}</title>
<style>{CSS}</style></head><body>
<h1>distill tune — {html.escape(summary.get('recipe', ''))}</h1>
<p class="sub">budget {summary.get('budget_s', 0) / 60:.1f} min, half for the distilled search, half for the student
alone · {counts['COMPLETE']} finished, {counts['PRUNED']} pruned (successive halving on per-epoch validation accuracy),
{counts['FAIL']} interrupted · scored on the validation split; the test split is left for the final run</p>
<div class="verdict">{html.escape(gap)} Best settings: {html.escape(params)}. Run them with
<code>distill run best.yaml</code>; compare several seeds before trusting a gap of a point or two.</div>
<h2>Score against each parameter</h2><img alt="trials" src="data:image/png;base64,{_figure(summary)}">
<h2>Best trials</h2>{table}
</body></html>"""

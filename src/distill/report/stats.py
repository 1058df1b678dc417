"""Across seeds: mean ± 95% t-interval for every column, and the paired test of the distilled student's gain.

Pure functions of numbers read from run artifacts (per-seed rows of `report.json`). A t-interval, not a normal one:
with 3 seeds the 97.5% quantile of Student's t with 2 degrees of freedom is 4.30, not 1.96. The gain is paired: seed
`s` trains the student alone and the distilled student from the same initial weights and data order, so the test is a
one-sample t-test on the per-seed differences (distilled − alone), not a comparison of two independent means.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats as sps  # scipy comes with scikit-learn, a dependency

LEVEL = 0.95


def t_interval(values: list[float]) -> dict[str, Any]:
    """Mean and the 95% t-interval of the mean: `{n, mean, std, lo, hi, half}` (`half`, `lo`, `hi` None for n < 2)."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    mean = float(x.mean())
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "lo": None, "hi": None, "half": None}
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf(0.5 + LEVEL / 2, n - 1) * std / math.sqrt(n))
    return {"n": n, "mean": mean, "std": std, "lo": mean - half, "hi": mean + half, "half": half}


def paired_gain(treated: list[float], control: list[float]) -> dict[str, Any]:
    """Per-seed differences `treated - control`: their mean, 95% t-interval, t statistic and two-sided p-value.
    `significant`: the interval excludes 0 (p < 0.05); None when there are fewer than 2 seeds."""
    d = np.asarray(treated, dtype=np.float64) - np.asarray(control, dtype=np.float64)
    out = t_interval(list(d))
    out["per_seed"] = [float(v) for v in d]
    if out["n"] < 2:
        return {**out, "t": None, "p": None, "significant": None}
    if out["std"] == 0:  # every seed gave the same difference: no spread to test against
        t, p = (math.inf * np.sign(out["mean"]) if out["mean"] else 0.0), (0.0 if out["mean"] else 1.0)
    else:
        t = out["mean"] / (out["std"] / math.sqrt(out["n"]))
        p = float(2 * sps.t.sf(abs(t), out["n"] - 1))
    return {**out, "t": float(t), "p": float(p), "significant": bool(p < 1 - LEVEL)}


def _pooled_reliability(tables: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """One reliability table from several with the same bins: counts summed, accuracy and confidence count-weighted."""
    count = np.sum([t["count"] for t in tables], axis=0)
    out = {"bin_lower": tables[0]["bin_lower"], "bin_upper": tables[0]["bin_upper"], "count": count.tolist()}
    for key in ("accuracy", "confidence"):
        if all(key in t for t in tables):
            weighted = np.sum([np.asarray(t[key]) * np.asarray(t["count"]) for t in tables], axis=0)
            out[key] = np.where(count > 0, weighted / np.maximum(count, 1), 0.0).tolist()
    return out


WORST_CASE = frozenset({"onnx_max_abs_diff"})  # columns whose per-seed rows combine by max, not mean


def aggregate(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Rows of one model, one per seed (`{seed: row}`) -> one row: the mean of every numeric column (the max of the
    `WORST_CASE` ones; other values from the first seed's row), `ci95`
    (`{column: [lo, hi]}`), `n_seeds`, the rows themselves under `per_seed`, and a reliability table pooled over
    seeds (so the calibration plot shows every seed's predictions)."""
    per_seed = {str(s): {k: v for k, v in row.items() if k != "reliability"} for s, row in rows.items()}
    first = next(iter(rows.values()))
    out: dict[str, Any] = {}
    ci: dict[str, list[float] | None] = {}
    for key, value in first.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if key != "reliability":
                out[key] = value  # descriptions (runtime, note, ...) are the same for every seed
            continue
        values = [row[key] for row in rows.values() if isinstance(row.get(key), (int, float))]
        if len(values) != len(rows):
            continue
        if key in WORST_CASE:  # a bound, not an estimate: the largest over seeds, no interval
            out[key], ci[key] = max(values), None
            continue
        stat = t_interval(values)
        out[key] = int(stat["mean"]) if isinstance(value, int) and len(set(values)) == 1 else stat["mean"]
        ci[key] = None if stat["half"] is None else [stat["lo"], stat["hi"]]
    tables = [row["reliability"] for row in rows.values() if row.get("reliability")]
    if len(tables) == len(rows) and tables:
        out["reliability"] = _pooled_reliability(tables)
    out.update({"ci95": ci, "n_seeds": len(rows), "per_seed": per_seed})
    return out

"""Quality sweep on the digits recipe: student alone vs KD over temperature, alpha, student width, label fraction.

    .venv/bin/python bench/digits_sweep.py --seeds 0 1 2 > /tmp/sweep.jsonl

Prints one JSON line per (setting, seed) with scratch and distilled test accuracy; not run by CI.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

from distill.recipe import load_recipe
from distill.pipeline import run_recipe
from distill.report import load_report

RECIPE = Path(__file__).resolve().parents[1] / "src" / "distill" / "recipes" / "digits.yaml"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--temperatures", type=float, nargs="+", default=[2.0, 4.0])
    ap.add_argument("--alphas", type=float, nargs="+", default=[0.5, 0.9])
    ap.add_argument("--hidden", type=int, nargs="+", default=[16])
    ap.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.1])
    args = ap.parse_args()
    for t, a, h, f, seed in itertools.product(args.temperatures, args.alphas, args.hidden, args.fractions, args.seeds):
        sets = [f"distill.temperature={t}", f"distill.alpha={a}", f"student.kwargs.hidden=[{h}]",
                f"data.labelled_fraction={f}", f"seed={seed}", "eval.latency_runs=5"]
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = run_recipe(load_recipe(RECIPE, sets), Path(tmp) / "run", progress=False)
            models = load_report(run_dir)["models"]
        print(json.dumps({"T": t, "alpha": a, "hidden": h, "labelled_fraction": f, "seed": seed,
                          **{k: round(100 * m["accuracy"], 2) for k, m in models.items()}}), flush=True)


if __name__ == "__main__":
    main()

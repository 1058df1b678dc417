"""Issue 12's `distill tune` target, measured on the test split: after

    OMP_NUM_THREADS=1 distill tune mnist-pretrained --budget 20m --out TUNE_DIR

this script runs, for each seed (the recipe's `seed` key: student initialisation, data order and data split), three
`distill run`s with the same student initialisation per seed, so every arm is paired by seed:

  tuned     TUNE_DIR/best.yaml                                    -> tuned distilled (+ alone at its lr)
  default   the recipe as tuned (TUNE_DIR/study.db), unchanged    -> default distilled, default alone
  alone-lr  the same recipe with train.lr = the tuned student-alone lr -> tuned alone (+ default method at that lr)

and prints mean ± 95% t-interval (n = seeds) of the paired differences of test accuracy. `--ablate` adds, for each tuned
setting that differs from the recipe's, a run of best.yaml with that one setting put back to the recipe's value
(where the gain comes from: tuned distilled − that run, paired). Not run by CI.

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/tune_target.py TUNE_DIR --work /tmp/tt > /tmp/tt.jsonl
    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/tune_target.py TUNE_DIR --work /tmp/tt --ablate-only >> /tmp/tt.jsonl
    PYTHONPATH=src .venv/bin/python bench/tune_target.py TUNE_DIR --summarize /tmp/tt.jsonl

Seeds other than the recipe's own also draw another train/val/test split of the 5,000 images, so their test split can
share images with the validation split the tune scored on (selection only; no arm trains on them); the script counts
that overlap per seed (`val_overlap`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml

from distill.pipeline import prepare
from distill.recipe import load_recipe
from distill.report.stats import t_interval  # noqa: E402

ARMS = {  # arm -> (run, model in report.json)
    "tuned distilled": ("tuned", "distilled"),
    "tuned alone": ("alone-lr", "scratch"),
    "default distilled": ("default", "distilled"),
    "default alone": ("default", "scratch"),
    "alone at tuned-distilled lr": ("tuned", "scratch"),
    "default method at tuned-alone lr": ("alone-lr", "distilled"),
}
PAIRS = [("tuned distilled", "tuned alone"), ("tuned distilled", "default distilled"),
         ("tuned alone", "default alone"), ("tuned distilled", "default alone"),
         ("default distilled", "default alone")]


def _hashes(ds) -> set[str]:
    def image(item):
        if isinstance(item, dict):
            return next(v for k, v in item.items() if k not in ("labels", "index"))
        return item[0]

    return {hashlib.sha1(image(ds[i]).numpy().tobytes()).hexdigest() for i in range(len(ds))}


SET_PATH = {"temperature": "distill.temperature", "alpha": "distill.alpha", "standardize": "distill.options.standardize",
            "lr": "train.lr"}


def _defaults(recipe) -> dict:
    """The recipe's own value of each tuned key (`standardize`: the method's option default when not written)."""
    from distill.methods import METHODS

    field = METHODS.get(recipe.distill.method).Options.model_fields.get("standardize")
    std = recipe.distill.options.get("standardize", field.default if field else None)
    return {"method": recipe.distill.method, "temperature": recipe.distill.temperature, "alpha": recipe.distill.alpha,
            "standardize": std, "lr": recipe.train.lr}


def runs(tune_dir: Path, work: Path, seeds: list[int], main_runs: bool = True, ablate: bool = False) -> None:
    work.mkdir(parents=True, exist_ok=True)
    summary = json.loads((tune_dir / "tune.json").read_text())
    base_recipe = work / "default.yaml"  # exactly the recipe that was tuned (with its --set overrides)
    study = optuna.load_study(study_name="distilled", storage=f"sqlite:///{(tune_dir / 'study.db').resolve()}")
    base_recipe.write_text(study.user_attrs["recipe"], encoding="utf-8")
    alone_lr = summary["baseline"]["params"]["lr"]
    recipes = {"tuned": (tune_dir / "best.yaml", []), "default": (base_recipe, []),
               "alone-lr": (base_recipe, [f"train.lr={alone_lr!r}"])}
    if not main_runs:
        recipes = {}
    if ablate:
        defaults, best = _defaults(load_recipe(base_recipe)), summary["best"]["params"]
        if best.get("method", defaults["method"]) != defaults["method"]:
            print(f"note: method {best['method']} vs {defaults['method']}: not ablated (other keys apply)",
                  file=sys.stderr)
        for key, value in best.items():
            if key in SET_PATH and value != defaults[key] and defaults[key] is not None:
                recipes[f"ablate-{key}"] = (tune_dir / "best.yaml", [f"{SET_PATH[key]}={defaults[key]!r}".replace(
                    "True", "true").replace("False", "false")])
                ARMS[f"tuned, {key} back to {defaults[key]}"] = (f"ablate-{key}", "distilled")
                PAIRS.append(("tuned distilled", f"tuned, {key} back to {defaults[key]}"))
    tuned_seed = load_recipe(base_recipe).seed
    val_hashes = _hashes(prepare(load_recipe(base_recipe)).data.val)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    for seed in seeds:
        overlap = len(_hashes(prepare(load_recipe(base_recipe, [f"seed={seed}"])).data.test) & val_hashes)
        for run, (path, sets) in recipes.items():
            out = work / f"{run}-seed{seed}"
            cmd = [sys.executable, "-m", "distill.cli", "run", str(path), "--out", str(out), "--overwrite",
                   "--no-progress", "--set", f"seed={seed}", *[a for s in sets for a in ("--set", s)]]
            started = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
            seconds = time.perf_counter() - started
            print(f"seed {seed} {run}: {seconds:.0f} s  ({' '.join(cmd[1:])})", file=sys.stderr, flush=True)
            report = json.loads((out / "report.json").read_text())
            config = yaml.safe_load((out / "config.yaml").read_text())
            for arm, (r, model) in ARMS.items():
                if r == run:
                    print(json.dumps({"seed": seed, "arm": arm, "run": run,
                                      "accuracy": report["models"][model]["accuracy"],
                                      "teacher": report["models"]["teacher"]["accuracy"],
                                      "lr": config["train"]["lr"], "distill": config["distill"],
                                      "val_overlap": overlap, "tuned_seed": tuned_seed, "seconds": seconds}),
                          flush=True)


def _ci(diffs: list[float]) -> tuple[float, float]:
    """Mean and 95% t half-width of paired differences (NaN half-width below 2 values)."""
    ci = t_interval(diffs)
    return ci["mean"], math.nan if ci["half"] is None else ci["half"]


def summarize(tune_dir: Path, path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by: dict[str, dict[int, dict]] = {}
    for row in rows:
        by.setdefault(row["arm"], {})[row["seed"]] = row
    seeds = sorted({r["seed"] for r in rows})
    summary = json.loads((tune_dir / "tune.json").read_text())
    trials, base_trials = summary["trials"], summary["baseline_trials"]

    def count(ts: list[dict]) -> str:
        states = [t["state"] for t in ts]
        return f"{len(ts)} trials ({states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned)"

    print(f"tune: distilled search {count(trials)}; student-alone search {count(base_trials)}")
    print(f"best distilled (val {100 * summary['best']['value']:.2f}%): {summary['best']['params']}")
    print(f"best student alone (val {100 * summary['baseline']['value']:.2f}%): {summary['baseline']['params']}")
    print(f"test images shared with the tune's validation split, per seed: "
          f"{ {s: next(iter(by.values()))[s]['val_overlap'] for s in seeds} }")
    print()
    print("| arm | lr | distill settings | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |")
    print("|---|---|---|" + "---|" * (len(seeds) + 1))
    for arm, per in by.items():
        any_row = next(iter(per.values()))
        d = any_row["distill"]
        settings = "-" if arm.endswith("alone") or arm.startswith("alone") else ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in [("method", d["method"]), ("T", d.get("temperature")), ("alpha", d.get("alpha")),
                         *sorted((d.get("options") or {}).items())] if v is not None)
        accs = [100 * per[s]["accuracy"] for s in seeds if s in per]
        cells = [f"{100 * per[s]['accuracy']:.2f}" if s in per else "-" for s in seeds]
        print(f"| {arm} | {any_row['lr']:.3g} | {settings} | " + " | ".join(cells)
              + f" | {statistics.fmean(accs):.2f}{'' if len(accs) == len(seeds) else f' (n={len(accs)})'} |")
    print()
    print("| paired difference (test accuracy, points) | mean ± 95% t-interval (n = seeds) | per seed |")
    print("|---|---|---|")
    ablations = [("tuned distilled", arm) for arm in by if arm.startswith("tuned, ")]
    for a, b in PAIRS + [p for p in ablations if p not in PAIRS]:
        if a not in by or b not in by:
            continue
        common = sorted(set(by[a]) & set(by[b]))
        diffs = [100 * (by[a][s]["accuracy"] - by[b][s]["accuracy"]) for s in common]
        m, h = _ci(diffs)
        print(f"| {a} − {b} | {m:+.2f} ± {h:.2f} | " + ", ".join(f"{d:+.1f}" for d in diffs) + " |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tune_dir", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--work", type=Path, default=Path("/tmp/tune-target"))
    ap.add_argument("--ablate", action="store_true", help="also run best.yaml with each tuned key put back")
    ap.add_argument("--ablate-only", action="store_true", help="only the ablation runs")
    ap.add_argument("--summarize", type=Path)
    args = ap.parse_args()
    if args.summarize:
        summarize(args.tune_dir, args.summarize)
    else:
        runs(args.tune_dir, args.work, args.seeds, main_runs=not args.ablate_only,
             ablate=args.ablate or args.ablate_only)


if __name__ == "__main__":
    main()

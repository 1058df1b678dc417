"""Every distillation method on Fashion-MNIST, several seeds, against the student trained alone (not run by CI).

    PYTHONPATH=src .venv/bin/python bench/methods.py --out runs/bench-methods > bench-methods.log
    PYTHONPATH=src .venv/bin/python bench/methods.py --out runs/bench-methods --table   # table from results.jsonl

Teachers are trained once (seed 0 is the teacher of every method; seeds 1 and 2 give the ensemble's extra members),
then each (method, seed) is a full `distill run` of fashion-mnist with the trained teacher's weights,
so every row goes through the same pipeline a user runs. One JSON line per run goes to `<out>/results.jsonl` as it
finishes (a killed benchmark keeps what it measured); the markdown table (mean ± 95% CI over seeds, Student's t) is
printed at the end. Requires `apt-get install -y dataset-fashion-mnist`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import time
from pathlib import Path

from distill.methods import METHODS as REGISTRY
from distill.recipe import load_recipe
from distill.pipeline import run_recipe
from distill.report import load_report

RECIPE = Path(__file__).resolve().parents[1] / "src" / "distill" / "recipes" / "fashion-mnist.yaml"
# name -> recipe overrides (on top of the schedule); options not given take each method's paper defaults.
METHODS: dict[str, list[str]] = {
    "kd": ["distill.method=kd"],
    "kd + logit std.": ["distill.method=kd", "distill.options.standardize=true"],
    "dkd": ["distill.method=dkd"],  # the paper's warm-up: the first 20/240 of the steps
    "ensemble (3 teachers)": ["distill.method=ensemble"],  # teachers filled in from the trained extra teachers
    "born_again (2 gen.)": ["distill.method=born_again", "distill.options.generations=2"],
    "fitnet": ["distill.method=fitnet"],
    "attention": ["distill.method=attention"],
    "rkd": ["distill.method=rkd"],
    "pkt": ["distill.method=pkt"],
    "crd": ["distill.method=crd"],
    "cosine": ["distill.method=cosine"],
}
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def unset_ignored(sets: list[str]) -> list[str]:
    """The recipe writes distill.temperature and distill.alpha; unset those the chosen method does not read (a
    method refuses a key it would ignore)."""
    method = [s.split("=", 1)[1] for s in sets if s.startswith("distill.method=")][-1]
    return [f"distill.{k}=null" for k in ("temperature", "alpha") if k not in REGISTRY.get(method).uses]


def schedule(args: argparse.Namespace) -> list[str]:
    return [
        f"data.kwargs.train_size={args.train_size}", f"data.kwargs.test_size={args.test_size}",
        f"data.kwargs.val_size={args.val_size}", f"train.epochs={args.epochs}", f"teacher.epochs={args.teacher_epochs}",
        f"teacher.kwargs.channels={args.teacher_channels}", f"student.kwargs.channels={args.student_channels}",
        f"data.batch_size={args.batch_size}", "eval.latency_runs=5", "eval.latency_warmup=1",
    ]


def train_teachers(args: argparse.Namespace, out: Path) -> list[str]:
    """Train the teacher (seed 0) and the ensemble's extra members (seeds 1..) once; return their weight files."""
    paths = []
    for seed in range(args.ensemble_size):
        path = out / f"teacher-{seed}" / "checkpoints" / "teacher.safetensors"
        if not path.is_file():
            # method=scratch with one student epoch: the run is the teacher phase (train.max_steps would cap it too)
            sets = [*schedule(args), f"seed={seed}", "distill.method=scratch", "train.epochs=1"]
            sets += unset_ignored(sets)
            run_recipe(load_recipe(RECIPE, sets), path.parents[1], overwrite=True, progress=False)
        paths.append(str(path))
    return paths


def ci95(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan")
    return mean, T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))


def table(rows: list[dict]) -> str:
    """Markdown: student alone first, then each method, accuracy and paired gain over the student alone."""
    by: dict[str, dict[int, dict]] = {}
    for r in rows:
        by.setdefault(r["method"], {})[r["seed"]] = r
    scratch = {r["seed"]: r["scratch"] for r in rows}
    teacher = statistics.fmean(r["teacher"] for r in rows) if rows else float("nan")
    lines = ["| method | test accuracy % (mean ± 95% CI) | gain vs student alone (paired) | seeds | s / run |",
             "|---|---|---|---|---|"]
    m, h = ci95(list(scratch.values()))
    lines.append(f"| teacher (reference) | {teacher:.2f} | | | |")
    lines.append(f"| **student alone** | {m:.2f} ± {h:.2f} | — | {len(scratch)} | |")
    for name in METHODS:
        runs = by.get(name, {})
        if not runs:
            continue
        acc = [r["distilled"] for r in runs.values()]
        gain = [r["distilled"] - scratch[s] for s, r in runs.items()]
        (ma, ha), (mg, hg) = ci95(acc), ci95(gain)
        wall = statistics.fmean(r["wall_s"] for r in runs.values())
        lines.append(f"| {name} | {ma:.2f} ± {ha:.2f} | {mg:+.2f} ± {hg:.2f} | {len(acc)} | {wall:.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("runs/bench-methods"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--train-size", type=int, default=4000)
    ap.add_argument("--test-size", type=int, default=2000)
    ap.add_argument("--val-size", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--teacher-epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--teacher-channels", default="[16,32,64]")
    ap.add_argument("--student-channels", default="[8,16]")
    ap.add_argument("--ensemble-size", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=None, help="cap per phase (smoke runs of this script)")
    ap.add_argument("--table", action="store_true", help="only print the table from <out>/results.jsonl")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    if not args.table:
        started = time.perf_counter()
        teachers = train_teachers(args, args.out)
        extra = ",".join(f"{{name: cnn, kwargs: {{channels: {args.teacher_channels}}}, weights: {p}}}" for p in teachers[1:])
        for seed in args.seeds:
            for name in args.methods:
                sets = [*schedule(args), f"seed={seed}", f"teacher.weights={teachers[0]}", *METHODS[name]]
                sets += unset_ignored(sets)
                if name.startswith("ensemble"):
                    sets.append(f"distill.options.teachers=[{extra}]")
                if args.max_steps:
                    sets.append(f"train.max_steps={args.max_steps}")
                t0 = time.perf_counter()
                run_dir = run_recipe(load_recipe(RECIPE, sets), args.out / "runs" / f"{re.sub('[^a-z0-9]+', '-', name)}-{seed}",
                                     overwrite=True, progress=False)
                models = load_report(run_dir)["models"]
                row = {"method": name, "seed": seed, "wall_s": round(time.perf_counter() - t0, 1),
                       **{k: round(100 * v["accuracy"], 2) for k, v in models.items()}}
                with results.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
        print(f"total wall time: {time.perf_counter() - started:.0f} s", flush=True)
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    print(table(rows))


if __name__ == "__main__":
    main()

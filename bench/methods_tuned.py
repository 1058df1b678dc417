"""Which method should I pick? (issue 11 item 5): each method's loss weight (and T) chosen on the validation split from
a small grid, the same number of grid points for every arm (the student alone searches its learning rate), then the
chosen setting of every arm on 3 seeds, scored on the test split, paired with the student alone (not run by CI).

    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python bench/methods_tuned.py --teacher T.safetensors \\
        --out /tmp/mt.jsonl                       # one JSON line per training run, appended as it finishes
    PYTHONPATH=src .venv/bin/python bench/methods_tuned.py --teacher T.safetensors --out /tmp/mt.jsonl --summarize
    # relation methods, teacher live; the student-alone runs already in the file are reused
    ... bench/methods_tuned.py --teacher T.safetensors --out /tmp/mt.jsonl --arms "student alone" rkd pkt --live-grid 2

The teacher is given (`--teacher`: e.g. a `fashion-mnist-compress` run's `checkpoints/teacher.safetensors`, trained
on 20k images of the same seed-0 split, so it never saw the validation or test images); its logits on the training
split are computed once and looked up per batch (`distill.tune.IndexedLogits`), so a distilled run costs what the
student alone costs. The default arms are the methods that learn from the teacher's logits in one phase (kd, kd with
logit standardisation, dkd), run from the cached logits. `--arms rkd pkt crd` adds the relation methods (the only
feature/relation methods that can pair an MLP student with the CNN teacher, `distill pairs`): each step runs the
teacher model live (`LiveTeacher`, its features are tapped), searching the feature term's weight over 4 points, or the
middle 2 with `--live-grid 2`. `--max-epochs N` times one run of each arm's first grid point for N epochs (nothing is
recorded), to size the grid before spending the CPU. Selection: seed 0, accuracy on the
validation split after the last epoch. Final: the chosen setting on every seed (seed 0's selection run is reused;
same seed, same initial weights and data order), accuracy on the test split. Re-running with the same `--out` skips
the runs already in the file.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from distill.engine.evaluate import accuracy, predict
from distill.engine.loop import fit
from distill.methods import METHODS as REGISTRY
from distill.methods import build_method
from distill.pipeline import data_loader, prepare
from distill.recipe import load_recipe
from distill.report.stats import paired_gain, t_interval
from distill.seeds import fresh_student
from distill.teachers import LiveTeacher, freeze
from distill.tune import IndexedLogits

RECIPE = Path(__file__).resolve().parents[1] / "src" / "distill" / "recipes" / "fashion-mnist.yaml"
# arm -> grid of override lists; every arm has GRID_SIZE points (the same search budget)
GRID: dict[str, list[list[str]]] = {
    "student alone": [[f"train.lr={lr}"] for lr in (0.001, 0.002, 0.005, 0.01)],
    "kd": [["distill.method=kd", f"distill.temperature={t}", f"distill.alpha={a}"] for t in (1, 2) for a in (0.5, 0.9)],
    "kd + logit std.": [["distill.method=kd", "distill.options.standardize=true", f"distill.temperature={t}",
                         f"distill.alpha={a}"] for t in (1, 2) for a in (0.5, 0.9)],
    "dkd": [["distill.method=dkd", f"distill.temperature={t}", f"distill.options.dkd_beta={b}"]
            for t in (1, 4) for b in (2, 8)],
}
LOGIT_ARMS = list(GRID)
# Relation methods (the teacher runs live on every step; `--arms rkd pkt crd`): the only feature/relation methods that
# can pair an MLP student with the CNN teacher (see BENCHMARKS.md). Their grid is over the feature term's weight
# around the paper's default (rkd 1 x distances 25 / angles 50, pkt 30000, crd 0.8), CE at weight 1, no KD term;
# `--live-grid 2` keeps the two middle points of each (a smaller search than the logit arms': stated in the table).
LIVE_GRID: dict[str, list[float]] = {
    "rkd": [0.1, 0.3, 1.0, 3.0],
    "pkt": [3000.0, 10000.0, 30000.0, 100000.0],
    "crd": [0.2, 0.4, 0.8, 1.6],
}
for _name, _weights in LIVE_GRID.items():
    GRID[_name] = [[f"distill.method={_name}", f"distill.options.feature_weight={w:g}"] for w in _weights]


def schedule(args: argparse.Namespace) -> list[str]:
    return [f"data.kwargs.train_size={args.train_size}", f"train.epochs={args.epochs}",
            f"student.name={args.student}", f"student.kwargs={args.student_kwargs}", f"teacher.weights={args.teacher}",
            "data.batch_size=128", "train.lr=0.003"]


def recipe_for(args: argparse.Namespace, sets: list[str], epochs: int | None = None):  # noqa: ANN201
    method = next((s.split("=", 1)[1] for s in reversed(sets) if s.startswith("distill.method=")), "kd")
    ignored = [f"distill.{k}=null" for k in ("temperature", "alpha") if k not in REGISTRY.get(method).uses
               and not any(s.startswith(f"distill.{k}=") for s in sets)]
    extra = [f"train.epochs={epochs}"] if epochs else []
    return load_recipe(RECIPE, [*schedule(args), *ignored, *sets, *extra])


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        base = recipe_for(args, [])
        self.prepared = prepare(base)
        data = self.prepared.data
        teacher = freeze(self.prepared.teacher.cpu())
        self.teacher_model = teacher
        logits, _ = predict(teacher, data_loader(data.train, 512, shuffle=False, seed=0))
        self.source = IndexedLogits(logits)
        self.val = data_loader(data.val, 512, shuffle=False, seed=0)
        self.test = data_loader(data.test, 512, shuffle=False, seed=0)
        self.teacher = {"val": accuracy(teacher, self.val), "test": accuracy(teacher, self.test)}

    def run(self, sets: list[str], seed: int, epochs: int | None = None) -> dict[str, Any]:
        r = recipe_for(self.args, sets, epochs)
        data = self.prepared.data
        student = fresh_student(r, data, seed)
        if any(s.startswith("distill.method=") for s in sets):
            live = REGISTRY.get(r.distill.method).runs_teacher_models  # feature/relation methods: the teacher runs live
            source = LiveTeacher(self.teacher_model, tune=False) if live else self.source
            method = build_method(r.distill.method, student, source, temperature=r.distill.temperature,
                                  alpha=r.distill.alpha, options=r.distill.options)
        else:
            method = build_method("scratch", student, None)
        curve: list[float] = []

        def evaluate(m: torch.nn.Module) -> dict[str, float]:
            curve.append(accuracy(m.student, self.val))
            return {"accuracy": curve[-1]}

        set_seed(seed)
        loader = data_loader(data.train, r.data.batch_size, shuffle=True, seed=seed)
        started = time.perf_counter()
        summary = fit(method, loader, r.train, accelerator=Accelerator(cpu=True), phase="trial", evaluate=evaluate,
                      progress=False)
        return {"val": curve[-1], "val_curve": curve, "test": accuracy(student, self.test),
                "steps": summary.get("steps"), "seconds": round(time.perf_counter() - started, 1)}


def grid(arm: str, args: argparse.Namespace) -> list[list[str]]:
    """The grid points an arm searches: the relation arms keep their middle two under `--live-grid 2`."""
    points = GRID[arm]
    return points[1:3] if arm in LIVE_GRID and args.live_grid == 2 else points


def short(sets: list[str]) -> str:
    """`["distill.method=kd", "distill.temperature=2"]` -> `method=kd, temperature=2`."""
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in (s.split("=", 1) for s in sets))


def load(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def chosen(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """arm -> the grid point with the best validation accuracy on the selection seed (first one on ties)."""
    best: dict[str, tuple[float, list[str]]] = {}
    for row in rows:
        if row.get("stage") == "select" and (row["arm"] not in best or row["val"] > best[row["arm"]][0]):
            best[row["arm"]] = (row["val"], row["sets"])
    return {arm: sets for arm, (_, sets) in best.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train-size", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--student", default="mlp", help="registry name of the student")
    ap.add_argument("--student-kwargs", default="{hidden: [32]}", help="its kwargs, YAML")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=LOGIT_ARMS, choices=list(GRID))
    ap.add_argument("--live-grid", type=int, choices=(2, 4), default=4,
                    help="grid points per relation arm (rkd, pkt, crd): 4 (the logit arms' budget) or the middle 2")
    ap.add_argument("--max-epochs", type=int, default=None, help="timing probe: train this many epochs, print, exit")
    ap.add_argument("--summarize", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.summarize:
        return summarize(load(args.out), args)
    rows = load(args.out)
    done = {(r["stage"], r["arm"], json.dumps(r["sets"]), r["seed"]) for r in rows}
    bench = Bench(args)

    def record(stage: str, arm: str, sets: list[str], seed: int, epochs: int | None = None) -> None:
        if (stage, arm, json.dumps(sets), seed) in done:
            return
        row = {"stage": stage, "arm": arm, "sets": sets, "seed": seed, "epochs": epochs or args.epochs,
               "student": f"{args.student} {args.student_kwargs}", "train_size": args.train_size,
               "teacher": bench.teacher, **bench.run(sets, seed, epochs)}
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        rows.append(row)
        done.add((stage, arm, json.dumps(sets), seed))
        print(json.dumps({k: row[k] for k in ("stage", "arm", "sets", "seed", "val", "test", "seconds")}), flush=True)

    if args.max_epochs:  # timing probe, nothing recorded
        for arm in args.arms:
            out = bench.run(GRID[arm][0], args.seeds[0], args.max_epochs)
            print(json.dumps({"arm": arm, "epochs": args.max_epochs, "seconds": out["seconds"], "val": out["val"]}))
        return
    select_seed = args.seeds[0]
    for arm in args.arms:
        for sets in grid(arm, args):
            record("select", arm, sets, select_seed)
    best = chosen(rows)
    # plateau check: the student alone's chosen lr at twice the epochs (validation split, selection seed)
    record("plateau", "student alone", best["student alone"], select_seed, 2 * args.epochs)
    for seed in args.seeds[1:]:
        for arm in args.arms:
            record("final", arm, best[arm], seed)
    summarize(rows, args)


def summarize(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    best = chosen(rows)
    select_seed = args.seeds[0]

    def test_acc(arm: str) -> dict[int, float]:
        out = {}
        for r in rows:
            if r["arm"] == arm and r["sets"] == best[arm] and r["stage"] in ("select", "final") \
                    and r["epochs"] == args.epochs:
                if r["stage"] == "final" or r["seed"] == select_seed:
                    out[r["seed"]] = r["test"]
        return out

    teacher = next((r["teacher"] for r in rows), {})
    print(f"teacher: val {100 * teacher.get('val', 0):.2f}%, test {100 * teacher.get('test', 0):.2f}%")
    for r in rows:
        if r["stage"] == "select":
            print(f"select {r['arm']:16s} {short(r['sets']):55s} "
                  f"val {100 * r['val']:.2f}  ({r['seconds']:.0f} s)")
        if r["stage"] == "plateau":
            curve = ", ".join(f"{100 * v:.1f}" for v in r["val_curve"])
            print(f"plateau: student alone at {r['epochs']} epochs, val per epoch: {curve}")
    base = test_acc("student alone")
    print("\n| method | chosen on validation | test accuracy % (mean ± 95% CI) | gain vs student alone (paired) | seeds |")
    print("|---|---|---|---|---|")
    print(f"| teacher (reference) | | {100 * teacher.get('test', 0):.2f} | | |")
    for arm in args.arms:
        acc = test_acc(arm)
        if not acc:
            continue
        stat = t_interval(list(acc.values()))
        ci = f" ± {100 * stat['half']:.2f}" if stat["half"] is not None else ""
        setting = short(best[arm])
        seeds = sorted(set(acc) & set(base))
        gain = ""
        if arm != "student alone" and len(seeds) >= 2:
            g = paired_gain([acc[s] for s in seeds], [base[s] for s in seeds])
            gain = f"{100 * g['mean']:+.2f} ± {100 * g['half']:.2f} (p = {g['p']:.3f})"
        print(f"| {arm} | {setting} | {100 * stat['mean']:.2f}{ci} | {gain or '—'} | {len(acc)} |")


if __name__ == "__main__":
    main()

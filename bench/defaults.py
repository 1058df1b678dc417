"""Which KD default does not lose to the student trained alone? Plain KD at the old defaults (T=4, alpha=0.9) against
lower T, logit standardisation (`distill.options.standardize`) at several T, and `temperature: auto` (derived from
the teacher diagnostics), on digits, Fashion-MNIST and the pretrained MNIST CNN teacher. Not run by CI.

    PYTHONPATH=src .venv/bin/python bench/defaults.py --seeds 0 1 2 > /tmp/defaults.jsonl 2> /tmp/defaults.log
    PYTHONPATH=src .venv/bin/python bench/defaults.py --summarize /tmp/defaults.jsonl

Per (case, seed): one teacher (trained once, or the pretrained one), then every arm from the same student
initialisation and data order, so the arms are paired; one JSON line per (case, seed, arm) with test accuracy.
`--summarize` prints, per case and arm, the mean over seeds and the mean paired difference to the student alone with
a 95% t-interval (n = seeds).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from distill.config import parse_recipe
from distill.diagnose import auto_temperature, sample_logits
from distill.engine.evaluate import accuracy
from distill.engine.loop import fit
from distill.methods import build_method
from distill.models.pretrained import is_pretrained
from distill.pipeline import data_loader, prepare
from distill.report.stats import t_interval  # noqa: E402
from distill.teachers import LiveTeacher, freeze

# Each case: the recipe of a user who names teacher, student and data (and a short schedule for this 2-core CPU).
CASES = {
    "digits": {"data": {"name": "digits", "batch_size": 64},
               "teacher": {"name": "mlp", "kwargs": {"hidden": [512, 512], "dropout": 0.1}, "epochs": 40},
               "student": {"name": "mlp", "kwargs": {"hidden": [16]}},
               "train": {"epochs": 40, "lr": 0.003}},
    "digits-10pct-labels": {"data": {"name": "digits", "batch_size": 64, "labelled_fraction": 0.1},
                          "teacher": {"name": "mlp", "kwargs": {"hidden": [512, 512], "dropout": 0.1}, "epochs": 40},
                          "student": {"name": "mlp", "kwargs": {"hidden": [16]}},
                          "train": {"epochs": 40, "lr": 0.003}},
    "fashion-mnist": {"data": {"name": "fashion-mnist", "kwargs": {"train_size": 10000, "test_size": 5000},
                               "batch_size": 128},
                      "teacher": {"name": "cnn", "kwargs": {"channels": [32, 64, 128]}, "epochs": 5},
                      "student": {"name": "cnn", "kwargs": {"channels": [8, 16]}},
                      "train": {"epochs": 5, "lr": 0.003}},
    "mnist-pretrained": {"data": {"name": "mnist", "batch_size": 64},
                         "teacher": {"name": "mnist-cnn-pretrained"},
                         "student": {"name": "cnn", "kwargs": {"channels": [8, 16]}},
                         "train": {"epochs": 10, "lr": 0.003}},
}
# arm -> (temperature or "auto", standardize); alpha 0.9 throughout (the default)
ARMS = {
    "T4 (old default)": (4.0, False), "T1": (1.0, False), "auto": ("auto", False),
    "std T1": (1.0, True), "std T2": (2.0, True), "std T4": (4.0, True), "std auto": ("auto", True),
}


def run_case(case: str, seed: int, arms: list[str]) -> None:
    doc = {"name": f"bench-{case}", "seed": seed, **copy.deepcopy(CASES[case])}
    doc["train"].update({"optimizer": "adam", "scheduler": "cosine"})
    recipe = parse_recipe(doc)
    p = prepare(recipe)
    acc = Accelerator(cpu=True)
    r, data = p.recipe, p.data
    test_loader = data_loader(data.test, 512, shuffle=False, seed=seed)

    def train(name: str, method: torch.nn.Module, train_set, **kw) -> float:
        set_seed(seed)
        loader = data_loader(train_set, r.data.batch_size, shuffle=True, seed=seed)
        started = time.perf_counter()
        fit(method, loader, r.train, accelerator=acc, phase=name, progress=False, **kw)
        print(f"{case} seed {seed} {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)
        return accuracy(acc.unwrap_model(method).student, test_loader, acc.device)

    teacher = p.teacher
    if not is_pretrained(teacher):
        train("teacher", build_method("scratch", teacher, None), data.teacher_train, epochs=r.teacher.epochs)
    teacher = freeze(acc.unwrap_model(teacher).to("cpu"))
    teacher_acc = accuracy(teacher, test_loader)
    logits, _ = sample_logits(teacher, data.train, sample=512)
    results = {"scratch": train("scratch", build_method("scratch", copy.deepcopy(p.student_init), None), data.train)}
    temps: dict[str, float] = {}
    for arm in arms:
        t, std = ARMS[arm]
        t = auto_temperature(logits, standardize=std) if t == "auto" else t
        temps[arm] = t
        method = build_method("kd", copy.deepcopy(p.student_init), LiveTeacher(teacher), temperature=t, alpha=0.9,
                              options={"standardize": std})
        results[arm] = train(arm, method, data.train)
    for arm, value in results.items():
        print(json.dumps({"case": case, "seed": seed, "arm": arm, "T": temps.get(arm), "accuracy": value,
                          "teacher": teacher_acc}), flush=True)


def _ci(diffs: list[float]) -> tuple[float, float]:
    """Mean and 95% t half-width of paired differences (NaN half-width below 2 values)."""
    ci = t_interval(diffs)
    return ci["mean"], math.nan if ci["half"] is None else ci["half"]


def summarize(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by = {}
    for row in rows:
        by.setdefault(row["case"], {}).setdefault(row["arm"], {})[row["seed"]] = row
    print("| case | arm | T | accuracy (mean of seeds) | vs student alone (paired, 95% CI) |")
    print("|---|---|---|---|---|")
    for case, arms in by.items():
        base = arms.get("scratch", {})
        teacher = statistics.fmean(r["teacher"] for r in base.values()) if base else math.nan
        for arm, seeds in arms.items():
            common = sorted(set(seeds) & set(base))
            mean = statistics.fmean(100 * seeds[s]["accuracy"] for s in seeds)
            ts = sorted({seeds[s]["T"] for s in seeds if seeds[s]["T"] is not None})
            t = "/".join(f"{x:g}" for x in ts) or "-"
            if arm == "scratch":
                print(f"| {case} (teacher {100 * teacher:.1f}%) | student alone | - | {mean:.2f} | n={len(seeds)} |")
                continue
            m, h = _ci([100 * (seeds[s]["accuracy"] - base[s]["accuracy"]) for s in common])
            print(f"| {case} | {arm} | {t} | {mean:.2f} | {m:+.2f} ± {h:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cases", nargs="+", default=list(CASES))
    ap.add_argument("--arms", nargs="+", default=list(ARMS))
    ap.add_argument("--summarize", type=Path)
    args = ap.parse_args()
    if args.summarize:
        summarize(args.summarize)
        return
    torch.set_num_threads(1)
    for case in args.cases:
        for seed in args.seeds:
            run_case(case, seed, args.arms)


if __name__ == "__main__":
    main()

"""Crash safety: SIGKILL `distill run` at random moments, `--resume` it, and compare with an uninterrupted run.

    PYTHONPATH=src python bench/crash.py --trials 20 [--workdir /tmp/crash] [--seed 0] [--processes 2]

Each trial starts the digits recipe (tiny models, checkpoints every `EVERY` steps, dropout in the teacher so the RNG
states matter) with `DISTILL_FAULT_SLEEP_S` set, which sleeps between the stages of every checkpoint write, so a good
share of the kills land *inside* a write. Once training has begun the run is SIGKILLed after a random delay; the
resume is itself killed again with probability 1/2; the last resume runs to the end. A trial succeeds when the final
student is bit-identical to the uninterrupted reference and every resume lost at most one checkpoint interval.
With `--processes N` every run (reference included) is `accelerate launch --multi_gpu --num_processes N` (gloo on
CPU) and the kill takes down the whole process group, as when a node dies. The trial logic is shared with
`tests/test_resume.py` (which runs a few single-process trials).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from distill.report import read_metrics

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "src" / "distill" / "recipes" / "digits.yaml"
EVERY = 4
PROCESSES = 1  # set by --processes
OVERRIDES = [
    "teacher.kwargs.hidden=[32]", "teacher.kwargs.dropout=0.1", "teacher.epochs=2", "student.kwargs.hidden=[8]",
    "train.epochs=2", "train.max_steps=16", "train.log_every=1", f"train.checkpoint_every={EVERY}",
    "data.batch_size=128", "eval.latency_runs=3", "eval.latency_warmup=1",
]


def argv(out: Path, *, resume: bool = False) -> list[str]:
    """`distill run` arguments for the crash recipe."""
    args = ["run", str(RECIPE), "--out", str(out), "--no-progress"]
    for o in OVERRIDES:
        args += ["--set", o]
    return args + (["--resume"] if resume else [])


def env(sleep_s: float = 0.0) -> dict[str, str]:
    """A child environment: our sources first, one thread (bit-exactness needs the same reduction order)."""
    e = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
             OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    if sleep_s:
        e["DISTILL_FAULT_SLEEP_S"] = str(sleep_s)
    return e


def command(out: Path, *, resume: bool = False) -> list[str]:
    """The child command line: `python -m distill run ...`, under `accelerate launch` when PROCESSES > 1."""
    launch = []
    if PROCESSES > 1:
        launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(PROCESSES),
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  "--main_process_port", str(29400 + random.randrange(500))]
    return [sys.executable, *launch, "-m", "distill", *argv(out, resume=resume)]


def run_cli(out: Path, *, resume: bool = False, timeout: float = 300) -> int:
    """Run `distill run` to the end in a child process; its exit status."""
    return subprocess.run(command(out, resume=resume), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          timeout=timeout).returncode


def metrics(out: Path) -> list[dict[str, Any]]:
    """Rows of `metrics.jsonl`, a torn last line skipped."""
    return read_metrics(out / "metrics.jsonl")


def kill_randomly(out: Path, rng: random.Random, *, resume: bool, window_s: float = 3.0, sleep_s: float = 0.03) -> dict:
    """Start a run, SIGKILL it `uniform(0, window_s)` seconds after its first metrics line. What happened."""
    before = len(metrics(out))
    proc = subprocess.Popen(command(out, resume=resume), env=env(sleep_s), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while proc.poll() is None and len(metrics(out)) <= before and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(rng.uniform(0.0, window_s))
    killed = proc.poll() is None
    if killed:  # the whole tree, as when a machine goes down (torchrun puts its workers in sessions of their own)
        _kill_tree(proc.pid)
    proc.wait()
    rows = [r for r in metrics(out)[before:] if "step" in r and "event" not in r and "loss" in r]
    in_write = any(p.name.startswith(".tmp-") for p in (out / "checkpoints").iterdir()) if killed else False
    last = (rows[-1]["phase"], int(rows[-1]["step"])) if rows else None
    return {"killed": killed, "last_logged": last, "in_checkpoint_write": in_write, "rows_before": len(metrics(out))}


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once (stopped first, so none can react to the others)."""
    import psutil  # an Accelerate dependency

    root = psutil.Process(pid)
    tree = [root, *root.children(recursive=True)]
    for p in tree:
        try:
            p.suspend()
        except psutil.NoSuchProcess:
            pass
    for p in tree:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=30)


def lost_steps(out: Path, last: tuple[str, int] | None, rows_before: int) -> int:
    """Steps of the killed phase trained again by the resume that followed (0 if the phase was restored whole)."""
    if last is None:
        return 0
    phase, step = last
    for row in metrics(out)[rows_before:]:
        if row.get("phase") == phase and row.get("event") == "phase_restored":
            return 0
        if row.get("phase") == phase and row.get("event") == "resumed":
            return step - int(row["step"])
    return step  # no checkpoint of that phase: it restarted from step 0


def trial(workdir: Path, reference: Path, seed: int, resume: Callable[[Path], int] | None = None) -> dict[str, Any]:
    """One kill -> (kill ->) resume trial; `resume(out)` finishes the run (default: a `distill run --resume` child)."""
    rng = random.Random(seed)
    out = workdir / f"trial-{seed}"
    kills = [kill_randomly(out, rng, resume=False)]
    if kills[0]["killed"] and rng.random() < 0.5:
        kills.append(kill_randomly(out, rng, resume=True))
    rc = (resume or (lambda o: run_cli(o, resume=True)))(out)
    # measured after the last resume: a resume killed before it reached the phase logged nothing about it
    losses = [lost_steps(out, k["last_logged"], k["rows_before"]) if k["killed"] else 0 for k in kills]
    identical = (out / "student.safetensors").is_file() and (
        (out / "student.safetensors").read_bytes() == (reference / "student.safetensors").read_bytes()
    )
    ok = rc == 0 and identical and all(0 <= n <= EVERY for n in losses)
    return {"seed": seed, "kills": kills, "lost_steps": losses, "resume_rc": rc, "identical": identical, "ok": ok}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/distill-crash"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--processes", type=int, default=1, help="processes per run (accelerate launch)")
    args = ap.parse_args()
    global PROCESSES
    PROCESSES = args.processes
    import shutil

    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    reference = args.workdir / "reference"
    started = time.perf_counter()
    assert run_cli(reference) == 0, "the reference run failed"
    results = []
    for i in range(args.trials):
        r = trial(args.workdir, reference, args.seed + i)
        results.append(r)
        where = "; ".join(
            f"{'killed' if k['killed'] else 'finished'} after {k['last_logged']}"
            f"{' inside a checkpoint write' if k['in_checkpoint_write'] else ''}" for k in r["kills"]
        )
        print(f"trial {i:2d}: {where}; lost {r['lost_steps']} steps; identical={r['identical']}; ok={r['ok']}", flush=True)
    kills = [k for r in results for k in r["kills"] if k["killed"]]
    summary = {
        "processes": PROCESSES, "trials": len(results), "successful_resumes": sum(r["ok"] for r in results),
        "sigkills": len(kills),
        "kills_inside_checkpoint_write": sum(k["in_checkpoint_write"] for k in kills),
        "bit_identical": sum(r["identical"] for r in results),
        "max_lost_steps": max((n for r in results for n in r["lost_steps"]), default=0), "interval": EVERY,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary))
    (args.workdir / "summary.json").write_text(json.dumps({"summary": summary, "trials": results}, indent=2))


if __name__ == "__main__":
    main()

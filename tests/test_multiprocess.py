"""Multi-process training (issue 4): `accelerate launch --multi_gpu --num_processes 2` on CPU (gloo) runs a recipe;
2 processes at batch B give the same weights as 1 process at batch 2B; metrics, checkpoints and the report are written
once; the teacher is never DDP-wrapped.

Tolerance: 1e-5 absolute on weights of magnitude ~0.3 (measured: 1.5e-8). The two runs see the same examples in each
global step (Accelerate hands batch 2k to rank 0 and 2k+1 to rank 1), but the gradient of the 64-example mean is
computed as the all-reduced average of two 32-example means: float32 sums in a different order differ in the last bit,
and 6 optimizer steps (Adam normalises by the running gradient scale) carry that rounding forward. 1e-5 is 0.3% of one
Adam step at lr 3e-3 -- any real divergence (wrong data shard, wrong schedule, double-counted gradient) is far larger.
All labels are kept: with unlabelled examples (label -100) each process averages the hard loss over *its* labelled
examples and DDP averages those means, which equals the global mean only when every process holds as many labels.
(`accelerate launch --cpu` starts one process unless MPI is set up; `--multi_gpu` uses torchrun, gloo on CPU.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import RECIPES
from safetensors.torch import load_file

from distill.cli import main

ROOT = Path(__file__).resolve().parents[1]
SETS = ["data.labelled_fraction=1.0", "teacher.kwargs.hidden=[32]", "teacher.kwargs.dropout=0", "teacher.epochs=1", "student.kwargs.hidden=[8]",
        "train.epochs=1", "train.max_steps=6", "train.log_every=1", "train.checkpoint_every=2",
        "eval.latency_runs=3", "eval.latency_warmup=1"]

# Runs in each launched process: the CLI, with a guard that fails if the teacher is ever DDP-wrapped, prepared, or
# shares parameters with a module handed to `accelerator.prepare` while it acts as the teacher.
GUARD = textwrap.dedent('''
    import json, os, sys
    import accelerate
    from torch import nn
    from distill.teachers import live

    prepared = set()
    real_prepare = accelerate.Accelerator.prepare
    def prepare(self, *objs, **kw):
        prepared.clear()
        for o in objs:
            if isinstance(o, nn.Module):
                prepared.update(id(p) for p in o.parameters())
        return real_prepare(self, *objs, **kw)
    accelerate.Accelerator.prepare = prepare

    calls = {"n": 0, "bad": 0}
    real_call = live.LiveTeacher.__call__
    def call(self, batch):
        calls["n"] += 1
        wrapped = type(self.model).__name__ == "DistributedDataParallel"
        shared = any(id(p) in prepared for p in self.model.parameters())
        trainable = any(p.requires_grad for p in self.model.parameters())
        calls["bad"] += int(wrapped or shared or trainable)
        return real_call(self, batch)
    live.LiveTeacher.__call__ = call

    from distill.cli import main
    try:
        main(sys.argv[1:])
    finally:
        rank = os.environ.get("RANK", "0")
        with open(os.path.join(os.environ["GUARD_OUT"], f"teacher-rank{rank}.json"), "w") as fh:
            json.dump(calls, fh)
''')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# crd: each process applies the whole global batch's bank updates and draws the global batch's negatives from a shared
# generator, so its banks and weights are those of one process at the global batch
# kd-accum: 2 processes at micro-batch 16 accumulating 2 per update (DDP syncs only each window's last backward)
METHOD_SETS = {"kd": [], "crd": ["distill.method=crd", "distill.alpha=null", "distill.options.negatives=64",
                                 "distill.options.embed_dim=8"], "kd-accum": []}
TWO_PROCESS_SETS = {"kd": ["data.batch_size=32"], "crd": ["data.batch_size=32"],
                    "kd-accum": ["data.batch_size=16", "train.grad_accum=2"]}


def _sets(batch: int | None, method: str = "kd") -> list[str]:
    size = TWO_PROCESS_SETS[method] if batch is None else [f"data.batch_size={batch}"]
    return [a for o in [*SETS, *METHOD_SETS[method], *size] for a in ("--set", o)]


def _training_rows(run: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["phase"], r["step"]) for r in rows if "loss" in r]


@pytest.mark.parametrize("method", ["kd", "crd", "kd-accum"])
def test_two_processes_match_one_at_the_same_global_batch(tmp_path, method):
    guard = tmp_path / "guard.py"
    guard.write_text(GUARD)
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()),
           str(guard), "run", str(RECIPES / "digits.yaml"), "--out", str(two), "--no-progress", *_sets(None, method)]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", GUARD_OUT=str(tmp_path))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    one = tmp_path / "one"
    main(["run", str(RECIPES / "digits.yaml"), "--out", str(one), "--no-progress", *_sets(64, method)])

    for name in ("checkpoints/teacher.safetensors", "checkpoints/scratch.safetensors", "student.safetensors"):
        a, b = load_file(str(one / name)), load_file(str(two / name))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0, msg=f"{name}:{k}")

    if method == "crd":  # the memory banks agree with one process's (written by the main process, gathered updates)
        a = load_file(str(one / "checkpoints" / "distilled-final" / "model.safetensors"))
        b = load_file(str(two / "checkpoints" / "distilled-final" / "model.safetensors"))
        assert torch.equal(a["filled"], b["filled"]) and int(a["filled"].sum()) == 6 * 64
        for k in ("bank_s", "bank_t"):
            torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0, msg=k)

    # written once: the same metrics rows as one process, one set of checkpoints, a complete report
    assert _training_rows(two) == _training_rows(one)
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == sorted(p.name for p in (one / "checkpoints").iterdir())
    assert json.loads((two / "status.json").read_text())["status"] == "complete"
    assert (two / "report.json").is_file()
    assert proc.stdout.count("test set") == 1  # one table, from the main process

    for rank in (0, 1):  # the teacher ran on both ranks, never wrapped, prepared or trainable
        calls = json.loads((tmp_path / f"teacher-rank{rank}.json").read_text())
        assert calls["n"] >= (6 if method == "kd" else 0) and calls["bad"] == 0, calls  # crd taps the model itself

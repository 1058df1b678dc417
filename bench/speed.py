"""Distillation step speed, measured as ratios in one process (A/B interleaved, median of repeats).

    PYTHONPATH=src python bench/speed.py [--repeats 5] [--steps 20] [--threads 2] [--teacher-calls N]

Work (issue 5): CNN teacher ~0.36M params, small CNN student ~5k params, Fashion-MNIST (real IDX files when
installed, else random data of that shape), batch 128, T=4, alpha=0.9, Adam 1e-3. Variants, each run for `--steps`
steps per round, rounds interleaved:
- `hand`: the loop a user would write — teacher in eval mode under `inference_mode`, default memory format,
  `F.kl_div(batchmean) * T^2`, a TensorDataset loader;
- `online`: our engine (`engine.loop.fit`) with `KD(student, LiveTeacher(teacher, expected_calls=N))` (exact
  execution chosen automatically; the choice is made once, before timing, as it is once per run, and its cost is
  printed as `choice_s`). N (`--teacher-calls`) is the run length the teacher is told, which decides whether
  compiling it can pay: by default the calls this script makes, `2 * (repeats + 1) * steps`; pass a real training
  run's step count (e.g. 9380 = 20 epochs of Fashion-MNIST at batch 128) to measure the steady state of such a run;
- `cached`: our engine with `KD(student, CachedTeacher(...))` over a cache built once (dense float16, 1 view);
- `plain`: our engine training the student alone (`Scratch`), same loader;
- `teacher`: our teacher forward alone (LiveTeacher), to get teacher cost / student cost.
Prints one JSON line: throughputs (samples/s), ratios and targets. Not run by CI.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fmnist_idx  # noqa: E402

from distill.config import TrainConfig  # noqa: E402
from distill.data import Indexed  # noqa: E402
from distill.engine.loop import fit  # noqa: E402
from distill.methods import build_method  # noqa: E402
from distill.teachers import CachedTeacher, LiveTeacher  # noqa: E402
from distill.teachers.cache_build import build_cache  # noqa: E402

T, ALPHA, LR, BATCH = 4.0, 0.9, 1e-3, 128


def block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]


def teacher_net() -> nn.Module:
    """~0.36M params: 3 conv blocks (32, 64, 128) then a 2048 -> 128 -> 10 head. (B, 1, 28, 28) -> (B, 10)."""
    return nn.Sequential(*block(1, 32), *block(32, 64), *block(64, 128), nn.Flatten(), nn.Linear(128 * 16, 128),
                         nn.ReLU(), nn.Linear(128, 10))


def student_net() -> nn.Module:
    """~5k params: conv blocks (16, 32), global average pool, linear. (B, 1, 28, 28) -> (B, 10)."""
    return nn.Sequential(*block(1, 16), *block(16, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def hand_loop(teacher: nn.Module, student: nn.Module, loader: DataLoader, steps: int) -> float:
    """The hand-written KD loop; returns samples/s over `steps` steps."""
    opt = torch.optim.Adam(student.parameters(), lr=LR)
    teacher.eval()
    student.train()
    it, n = iter(loader), 0
    start = time.perf_counter()
    for _ in range(steps):
        x, y = next(it)
        with torch.inference_mode():
            t_logits = teacher(x)
        s_logits = student(x)
        soft = F.kl_div(F.log_softmax(s_logits / T, -1), F.softmax(t_logits.clone() / T, -1), reduction="batchmean")
        loss = ALPHA * T * T * soft + (1 - ALPHA) * F.cross_entropy(s_logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += x.shape[0]
    return n / (time.perf_counter() - start)


CHANNELS_LAST = False


def ours(method: nn.Module, loader: DataLoader, steps: int, acc: Accelerator) -> float:
    cfg = TrainConfig(epochs=1, lr=LR, optimizer="adam", scheduler="constant", max_steps=steps, log_every=10,
                      channels_last=CHANNELS_LAST)
    return fit(method, loader, cfg, accelerator=acc, phase="bench", progress=False)["samples_per_s"]


def teacher_only(source: LiveTeacher, loader: DataLoader, steps: int) -> float:
    it, n = iter(loader), 0
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(it)
        source(batch)
        n += batch["inputs"].shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--channels-last", action="store_true", help="our engine with train.channels_last=true")
    ap.add_argument("--examples", type=int, default=10240, help="training examples used (cache built over them)")
    ap.add_argument("--teacher-calls", type=int, default=None,
                    help="run length told to the live teacher (default: the calls this script makes)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    global CHANNELS_LAST
    CHANNELS_LAST = args.channels_last
    torch.manual_seed(0)
    data = fmnist_idx.load("train")
    source = "fashion-mnist" if data is not None else "random"
    x, y = data if data is not None else (torch.rand(args.examples, 1, 28, 28), torch.randint(0, 10, (args.examples,)))
    x, y = x[: args.examples].contiguous(), y[: args.examples].contiguous()
    teacher, student0 = teacher_net().eval(), student_net()
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    hand_loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True, generator=gen(), drop_last=True)
    ds = Indexed(TensorDataset(x, y))
    loader = DataLoader(ds, batch_size=BATCH, shuffle=True, generator=gen(), drop_last=True)
    acc = Accelerator(cpu=True)

    calls = args.teacher_calls or 2 * (args.repeats + 1) * args.steps  # online + teacher-only variants, warm-up incl.
    live = LiveTeacher(copy.deepcopy(teacher), expected_calls=calls)
    t0 = time.perf_counter()
    live(next(iter(loader)))  # the exact-execution choice happens once per run; not part of the steady state
    choice_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build_cache(teacher, ds, Path(tmp) / "cache", batch_size=512)
        cache_s = time.perf_counter() - t0
        cached = CachedTeacher(Path(tmp) / "cache")
        variants = {
            "hand": lambda: hand_loop(teacher, copy.deepcopy(student0), hand_loader, args.steps),
            "online": lambda: ours(build_method("kd", copy.deepcopy(student0), live, temperature=T, alpha=ALPHA),
                                   loader, args.steps, acc),
            "cached": lambda: ours(build_method("kd", copy.deepcopy(student0), cached, temperature=T, alpha=ALPHA),
                                   loader, args.steps, acc),
            "plain": lambda: ours(build_method("scratch", copy.deepcopy(student0), None), loader, args.steps, acc),
            "teacher": lambda: teacher_only(live, loader, args.steps),
        }
        for fn in variants.values():  # warm-up round (allocator, first-call costs), not recorded
            fn()
        runs: dict[str, list[float]] = {k: [] for k in variants}
        for r in range(args.repeats):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))  # A B C / C B A
            for k in order:
                runs[k].append(variants[k]())
    thr = {k: statistics.median(v) for k, v in runs.items()}
    teacher_over_student = thr["plain"] / thr["teacher"]  # (time per sample teacher) / (time per sample student step)
    ratios = {
        "online_vs_hand": thr["online"] / thr["hand"],
        "cached_vs_plain_student": thr["cached"] / thr["plain"],
        "cached_vs_hand": thr["cached"] / thr["hand"],
        "epoch_speedup_vs_theory": (thr["cached"] / thr["online"]) / (1 + teacher_over_student),
    }
    targets = {"online_vs_hand": 1.5, "cached_vs_plain_student": 0.97, "cached_vs_hand": 5.0, "epoch_speedup_vs_theory": 0.9}
    print(json.dumps({
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "targets": targets,
        "met": {k: ratios[k] >= targets[k] for k in ratios},
        "samples_per_s": {k: round(v, 1) for k, v in thr.items()},
        "spread": {k: [round(min(v), 1), round(max(v), 1)] for k, v in runs.items()},
        "teacher_cost_over_student_cost": round(teacher_over_student, 3),
        # Amdahl: a cached step is a student step, so cached/hand <= (hand step time) / (student step time); the
        # share of the hand-written step spent outside the student step bounds what any cache can give.
        "hand_step_share_outside_student": round(1 - thr["hand"] / thr["plain"], 3),
        "teacher_execution": live.execution,
        "choice_s": round(choice_s, 2),
        "cache_build_s": round(cache_s, 2),
        "setup": {"data": source, "examples": len(ds), "batch": BATCH, "steps": args.steps, "repeats": args.repeats,
                  "teacher_calls": calls, "threads": args.threads, "train.channels_last": args.channels_last, "teacher_params": sum(p.numel() for p in teacher.parameters()),
                  "student_params": sum(p.numel() for p in student0.parameters()), "torch": torch.__version__},
    }))


if __name__ == "__main__":
    main()

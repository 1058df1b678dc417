"""Function matching (Beyer et al. 2022) vs plain KD vs the student alone, on Fashion-MNIST, through the teacher cache.

    PYTHONPATH=src python bench/function_matching.py --seeds 0 1 2 > /tmp/fm.jsonl

Sized for a shared 2-core CPU (~10-15 min): a ~0.36M-param CNN teacher (bench/speed.py's) is trained on a
`--train-size` subset, cached once per augmentation config for `--views` replayable views, and every student
(`cnn` (16, 32), ~5k params) trains from the cache, so no student run pays for a teacher forward:
- `scratch`: cross-entropy, crop/flip views;
- `kd`: Hinton KD (T=4, alpha=0.9) on the same consistent crop/flip views (teacher scored exactly what the student saw);
- `fm`: function matching — consistent views + mixup between examples, pure KL at T=1 (alpha=1), same epochs;
- `fm_patient` (and `scratch_patient`, `kd_patient`, the equal-budget controls): `--patience` times more epochs
  (views cycle; each is seen several times). `--variants` picks which to run.
Prints one JSON line per (variant, seed) and a final summary line. Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fmnist_idx  # noqa: E402
from speed import teacher_net  # noqa: E402

from distill import Distiller  # noqa: E402
from distill.augment import AugmentConfig, augmented  # noqa: E402
from distill.data import Indexed  # noqa: E402
from distill.engine.evaluate import classification_metrics, predict  # noqa: E402
from distill.models import create_model  # noqa: E402
from distill.teachers import CachedTeacher  # noqa: E402
from distill.teachers.cache_build import build_cache  # noqa: E402

BASE = AugmentConfig(crop_padding=2, flip=True)


def accuracy(model: torch.nn.Module, loader: DataLoader) -> float:
    return classification_metrics(*predict(model, loader, torch.device("cpu")))["accuracy"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train-size", type=int, default=5000)
    ap.add_argument("--teacher-epochs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--variants", nargs="+", default=["scratch", "kd", "fm", "fm_patient"],
                    help="any of scratch, kd, fm, scratch_patient, kd_patient, fm_patient")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train, test = fmnist_idx.load("train"), fmnist_idx.load("test")
    if train is None:
        raise SystemExit("install dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist)")
    g = torch.Generator().manual_seed(1234)
    pick = torch.randperm(len(train[0]), generator=g)[: args.train_size]
    train_ds = Indexed(TensorDataset(train[0][pick].contiguous(), train[1][pick].contiguous()))
    test_loader = DataLoader(Indexed(TensorDataset(*test)), batch_size=1000)
    views = BASE.model_copy(update={"views": args.views})
    mixed = views.model_copy(update={"mix": "mixup"})

    started = time.perf_counter()
    torch.manual_seed(0)
    teacher = teacher_net()
    tloader = DataLoader(augmented(Indexed(train_ds.base), views.without_mix(), 0), batch_size=args.batch_size, shuffle=True,
                         generator=torch.Generator().manual_seed(0))
    Distiller(None, teacher, method="scratch", lr=args.lr, progress=False).fit(tloader, epochs=args.teacher_epochs)
    teacher.eval()
    teacher_acc = accuracy(teacher, test_loader)
    print(json.dumps({"teacher_test_accuracy": teacher_acc, "teacher_train_s": round(time.perf_counter() - started, 1)}), flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        caches = {}
        for name, cfg in (("views", views), ("mixed", mixed)):
            t0 = time.perf_counter()
            manifest = build_cache(teacher, train_ds, Path(tmp) / name, augment=cfg, seed=0, temperature=4.0)
            caches[name] = CachedTeacher(Path(tmp) / name)
            print(json.dumps({"cache": name, "build_s": round(time.perf_counter() - t0, 1), "fidelity": manifest["fidelity"],
                              "bytes_per_example": manifest["bytes_per_example"]}), flush=True)
        variants = {
            "scratch": dict(source=None, aug=views, method="scratch", T=1.0, alpha=0.0, epochs=args.epochs),
            "kd": dict(source="views", aug=views, method="kd", T=4.0, alpha=0.9, epochs=args.epochs),
            "fm": dict(source="mixed", aug=mixed, method="kd", T=1.0, alpha=1.0, epochs=args.epochs),
        }
        for name in ("scratch", "kd", "fm"):  # the same with a `--patience` times longer schedule
            variants[f"{name}_patient"] = {**variants[name], "epochs": args.epochs * args.patience}
        variants = {k: variants[k] for k in args.variants}
        results: dict[str, list[float]] = {k: [] for k in variants}
        for seed in args.seeds:
            for name, v in variants.items():
                torch.manual_seed(seed)
                student = create_model("cnn", input_shape=(1, 28, 28), num_classes=10, channels=[16, 32])
                ds = augmented(train_ds, v["aug"], 0, mix=v["method"] != "scratch")  # seed 0: the views the cache holds
                loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
                source = caches[v["source"]] if v["source"] else None
                t0 = time.perf_counter()
                d = Distiller(source, student, method=v["method"], temperature=v["T"], alpha=v["alpha"], lr=args.lr,
                              progress=False).fit(loader, epochs=v["epochs"])
                acc = accuracy(d.student, test_loader)
                results[name].append(acc)
                print(json.dumps({"variant": name, "seed": seed, "epochs": v["epochs"], "test_accuracy": acc,
                                  "train_s": round(time.perf_counter() - t0, 1)}), flush=True)
    summary = {k: {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "runs": v}
               for k, v in results.items()}
    print(json.dumps({"summary": summary, "teacher_test_accuracy": teacher_acc, "args": vars(args),
                      "wall_s": round(time.perf_counter() - started, 1)}), flush=True)


if __name__ == "__main__":
    main()

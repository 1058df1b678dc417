"""Building a teacher cache: run the teacher once over K augmented views of every training example.

Crash safety: an existing manifest is deleted *first*, arrays are written under temporary names, flushed, fsynced and
renamed, and the manifest is written last (atomically). A full disk or a kill at any point leaves a directory without
a manifest, which `CachedTeacher` refuses as "incomplete".
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ..augment import AugmentConfig, Augmented
from ..errors import DistillError
from .cache import (
    DENSE_FILES,
    LOGP_FLOOR,
    MANIFEST,
    TOPK_FILES,
    CachedTeacher,
    data_fingerprint,
    fidelity,
    read_manifest,
    sha256_file,
    teacher_fingerprint,
    text_hash,
    write_manifest,
)
from .live import LiveTeacher


def cache_keys(teacher: torch.nn.Module, train: Dataset, augment: AugmentConfig, seed: int, precision: str) -> dict[str, str]:
    """The hashes a cache must match to be used for this teacher, data, augmentation and precision."""
    return {
        "teacher_sha256": teacher_fingerprint(teacher),
        "data_sha256": data_fingerprint(train),
        "augment_sha256": text_hash(augment.fingerprint(seed)),
        "precision": precision,
    }


def _views(train: Dataset, augment: AugmentConfig, seed: int, view: int) -> Dataset:
    return Augmented(train, augment, seed, view=view)


def _prepare_dir(out: Path, rebuild: bool, keys: dict[str, str], layout: dict[str, Any]) -> dict[str, Any] | None:
    """Returns the manifest of an up-to-date cache (nothing to do), or None after clearing the way for a build."""
    if out.exists() and not out.is_dir():
        raise DistillError(f"cache path {str(out)!r} is a file; choose a directory with --out")
    if out.is_dir() and any(out.iterdir()):
        if (out / MANIFEST).is_file() and not rebuild:
            doc = CachedTeacher(out, expect=keys).manifest  # raises "stale: built for ..." or "truncated or corrupt"
            for key, want in layout.items():
                if doc.get(key) != want:
                    raise DistillError(f"cache {str(out)!r} has {key}={doc.get(key)}, not {want}; pass --rebuild to change it")
            return doc
        if not rebuild:
            raise DistillError(f"{str(out)!r} holds a partial cache or other files; pass --rebuild to replace it")
        known = {MANIFEST, f".{MANIFEST}.tmp", *DENSE_FILES, *TOPK_FILES}
        strangers = [p.name for p in out.iterdir() if p.name not in known and not p.name.endswith(".partial")]
        if strangers:
            raise DistillError(f"{str(out)!r} holds files that are not a cache ({strangers[0]}, ...); choose another --out")
        (out / MANIFEST).unlink(missing_ok=True)  # first: from here on the directory is "incomplete"
        for p in out.iterdir():
            p.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DistillError(f"cannot create the cache directory {str(out)!r} ({exc.strerror}); choose a writable --out") from None
    return None


def build_cache(
    teacher: torch.nn.Module,
    train: Dataset,
    out: str | Path,
    *,
    augment: AugmentConfig | None = None,
    seed: int = 0,
    storage: str = "dense",
    topk: int = 5,
    batch_size: int = 512,
    precision: str = "fp32",
    temperature: float = 4.0,
    rebuild: bool = False,
    fidelity_sample: int = 512,
    workers: int = 0,
) -> dict[str, Any]:
    """Score `augment.views` views of every example of `train` (an indexed dataset) with `teacher` and store them.

    Returns the manifest (with `bytes_per_example`, `fidelity`, `up_to_date`). Raises `DistillError` for a stale
    cache without `rebuild`, a full disk, or an unwritable directory; on failure no manifest exists.
    """
    if storage not in ("dense", "topk"):
        raise DistillError(f"cache storage must be 'dense' or 'topk', got {storage!r}")
    augment = augment or AugmentConfig()
    out = Path(out)
    keys = cache_keys(teacher, train, augment, seed, precision)
    layout = {"storage": storage, "topk": topk if storage == "topk" else None}
    existing = _prepare_dir(out, rebuild, keys, layout)
    if existing is not None:
        return {**existing, "up_to_date": True}
    live = LiveTeacher(teacher, autocast=torch.bfloat16 if precision == "bf16" else None)
    n, k_views = len(train), augment.views
    first = next(iter(DataLoader(_views(train, augment, seed, 0), batch_size=2)))
    c = int(live(first).shape[-1])
    if storage == "topk" and not 1 <= topk < c:
        raise DistillError(f"cache topk must be between 1 and {c - 1} for {c} classes, got {topk}")
    idx_dtype = np.int16 if c < 2**15 else np.int32
    shapes = ({"logprobs.npy": ((n, k_views, c), np.float16)} if storage == "dense" else
              {"topk_logprobs.npy": ((n, k_views, topk), np.float16), "topk_indices.npy": ((n, k_views, topk), idx_dtype),
               "rest.npy": ((n, k_views), np.float16)})
    need = sum(int(np.prod(s)) * np.dtype(d).itemsize for s, d in shapes.values()) + (1 << 20)
    if shutil.disk_usage(out).free < need:
        raise DistillError(f"not enough disk space for the cache in {str(out)!r} ({need / 2**20:.1f} MiB needed); free space or choose --out")
    try:
        arrays = {name: np.lib.format.open_memmap(out / f"{name}.partial", mode="w+", dtype=d, shape=s)
                  for name, (s, d) in shapes.items()}
        for v in range(k_views):
            loader = DataLoader(_views(train, augment, seed, v), batch_size=batch_size, num_workers=workers)
            for batch in loader:
                i = batch["index"].numpy()
                logp = F.log_softmax(live(batch).float(), -1).clamp_min(LOGP_FLOOR)  # (B, C)
                if storage == "dense":
                    arrays["logprobs.npy"][i, v] = logp.numpy().astype(np.float16)
                else:
                    top, ids = logp.topk(topk, -1)  # (B, k)
                    rest = (1.0 - top.double().exp().sum(-1)).clamp_min(0.0)  # float64: no cancellation error
                    arrays["topk_logprobs.npy"][i, v] = top.numpy().astype(np.float16)
                    arrays["topk_indices.npy"][i, v] = ids.numpy().astype(idx_dtype)
                    arrays["rest.npy"][i, v] = rest.numpy().astype(np.float16)
        files = {}
        for name, arr in arrays.items():
            arr.flush()
            del arr
            part = out / f"{name}.partial"
            with open(part, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(part, out / name)
            files[name] = {"bytes": (out / name).stat().st_size, "sha256": sha256_file(out / name),
                           "shape": list(shapes[name][0]), "dtype": np.dtype(shapes[name][1]).name}
        arrays.clear()
        doc = {**keys, "storage": storage, "topk": topk if storage == "topk" else None, "num_examples": n,
               "views": k_views, "num_classes": c, "augment": augment.fingerprint(seed), "files": files,
               "bytes_per_example": sum(f["bytes"] for f in files.values()) / n,
               "bytes_per_view": sum(f["bytes"] for f in files.values()) / (n * k_views)}
        doc["fidelity"] = _fidelity(teacher, train, augment, seed, files, out, doc, temperature, fidelity_sample)
        write_manifest(out, doc)
    except OSError as exc:
        for p in out.glob("*.partial"):
            p.unlink(missing_ok=True)
        raise DistillError(
            f"writing the teacher cache in {str(out)!r} failed ({exc.strerror or exc}); the partial cache has no "
            "manifest and will not be used — free disk space and rerun with --rebuild"
        ) from None
    return {**read_manifest(out), "up_to_date": False}


def _fidelity(teacher, train, augment, seed, files, out, doc, temperature, sample) -> dict[str, float]:
    """Replay `sample` (example, view) pairs through the live fp32 teacher and compare with what was stored."""
    reader = CachedTeacher(out, _manifest=doc, verify=False)  # over the just-written files, before the manifest
    rng = np.random.default_rng(seed)
    n = len(train)
    picks = rng.choice(n * doc["views"], size=min(sample, n * doc["views"]), replace=False)
    live = LiveTeacher(teacher)  # exact fp32 reference, whatever precision was cached
    lives, cached = [], []
    for v in range(doc["views"]):
        ids = [int(p // doc["views"]) for p in picks if p % doc["views"] == v]
        if not ids:
            continue
        ds = torch.utils.data.Subset(_views(train, augment, seed, v), ids)
        for batch in DataLoader(ds, batch_size=256):
            lives.append(live(batch))
            cached.append(reader(batch))
    return {**fidelity(torch.cat(lives), torch.cat(cached), temperature), "sample": int(len(picks))}

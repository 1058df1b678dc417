"""An offline teacher cache: the teacher's outputs for K replayable augmented views of every training example.

Layout of a cache directory (numpy `.npy` files, read memory-mapped with `allow_pickle=False`):
- dense:  `logprobs.npy`  float16 `(N, K, C)` — teacher log-probabilities at T=1, i.e. logits shifted by their
  log-sum-exp. A shift does not change `softmax(z / T)` for any T, so they are exact logits up to float16 rounding.
- top-k:  `topk_logprobs.npy` float16 `(N, K, k)`, `topk_indices.npy` int16/int32 `(N, K, k)`, `rest.npy` float16
  `(N, K)` = probability mass outside the top k.
- `manifest.json`, written LAST and atomically (temp file + rename): shapes, per-file SHA-256, and the hashes of the
  teacher weights, the training inputs and the augmentation config. No manifest = a partial cache, never used.

Top-k reconstruction (documented approximation): the remaining mass is spread uniformly over the C - k classes
outside the top k, `p_j = rest / (C - k)`; the distribution is renormalised and returned as log-probabilities, which
*are* valid logits (`softmax(log p) = p`). KD consumes them exactly like live logits: `kd_loss` takes
`log_softmax(logits / T)`, so there is no "log-probs passed as probs" path. At T != 1 the tempered reconstruction
differs from the tempered teacher; the cache's reported fidelity (mean KL live vs cached at T=1 and at the recipe's T)
says by how much.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..batch import index_of
from ..errors import DistillError
from ..files import write_json_atomic

MANIFEST = "manifest.json"
FORMAT = "distill-teacher-cache"
VERSION = 1
DENSE_FILES = ("logprobs.npy",)
TOPK_FILES = ("topk_logprobs.npy", "topk_indices.npy", "rest.npy")
LOGP_FLOOR = -60000.0  # float16 range; log(0) would make 0 * -inf = NaN in KL
FULL_HASH_LIMIT = 2 << 30  # verify file SHA-256 on open below 2 GiB, else sizes only


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def teacher_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over the teacher's state dict: names, dtypes, shapes and bytes, in sorted name order."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def data_fingerprint(ds: Any) -> str:
    """SHA-256 of the training *inputs* in index order (labels do not change teacher outputs). Fast path for
    `Indexed(TensorDataset)`; otherwise every item is read once."""
    base = getattr(ds, "base", ds)
    h = hashlib.sha256(f"n={len(ds)}|".encode())
    tensors = getattr(base, "tensors", None)
    if isinstance(tensors, tuple) and tensors and isinstance(tensors[0], torch.Tensor):
        x = tensors[0].detach().cpu().contiguous()
        h.update(f"{x.dtype}|{tuple(x.shape)}|".encode())
        h.update(x.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()
    for i in range(len(ds)):
        x = ds[i]
        x = x["inputs"] if isinstance(x, dict) else (x[0] if isinstance(x, (tuple, list)) else x)
        x = torch.as_tensor(x).detach().cpu().contiguous()
        h.update(f"{x.dtype}|{tuple(x.shape)}|".encode())
        h.update(x.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a complete cache; `DistillError` for a missing, partial or unreadable one."""
    path = Path(path)
    if not path.is_dir():
        raise DistillError(f"teacher cache {str(path)!r} not found; build it with `distill cache RECIPE --out {path}`")
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise DistillError(
            f"teacher cache {str(path)!r} is incomplete (no {MANIFEST}: the build was interrupted); "
            "rebuild it with `distill cache RECIPE --rebuild`"
        )
    try:
        doc = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise DistillError(f"teacher cache manifest {str(mpath)!r} is corrupt; rebuild with `distill cache RECIPE --rebuild`") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise DistillError(f"{str(path)!r} is not a distill teacher cache (format v{VERSION}); rebuild it with --rebuild")
    return doc


def check_manifest(doc: dict[str, Any], path: str | Path, expect: dict[str, str]) -> None:
    """Refuse a cache built for another teacher, other data or another augmentation (one line, names the fix)."""
    what = {"teacher_sha256": "another teacher (weights differ)", "data_sha256": "other training data",
            "augment_sha256": "another augmentation config (augment: section)", "precision": "another teacher_precision"}
    for key, value in expect.items():
        if doc.get(key) != value:
            raise DistillError(
                f"teacher cache {str(path)!r} is stale: it was built for {what.get(key, key)}; "
                "rebuild it with `distill cache RECIPE --rebuild` or point distill.cache elsewhere"
            )


def _load_array(path: Path, meta: dict[str, Any], verify: bool) -> np.ndarray:
    if not path.is_file():
        raise DistillError(f"teacher cache file {str(path)!r} is missing; rebuild with `distill cache RECIPE --rebuild`")
    if path.stat().st_size != meta["bytes"] or (verify and sha256_file(path) != meta["sha256"]):
        raise DistillError(
            f"teacher cache file {str(path)!r} is truncated or corrupt (size or SHA-256 differs from the manifest); "
            "rebuild with `distill cache RECIPE --rebuild`"
        )
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DistillError(f"teacher cache file {str(path)!r} is unreadable ({exc}); rebuild with --rebuild") from None
    if list(arr.shape) != meta["shape"] or str(arr.dtype) != meta["dtype"]:
        raise DistillError(f"teacher cache file {str(path)!r} has shape/dtype other than its manifest; rebuild it")
    return arr


class CachedTeacher:
    """A teacher source backed by a cache: `teacher(batch) -> (B, C)` float32 logits (log-probabilities) for the
    examples `batch["index"]` and views `batch["view"]` (0 when absent). Runs no model at all.

        CachedTeacher("caches/fmnist", expect={"teacher_sha256": teacher_fingerprint(model)})
    """

    def __init__(
        self, path: str | Path, *, expect: dict[str, str] | None = None, verify: bool | None = None,
        _manifest: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.manifest = _manifest if _manifest is not None else read_manifest(self.path)  # _manifest: during a build
        check_manifest(self.manifest, self.path, expect or {})
        files = self.manifest["files"]
        if verify is None:
            verify = sum(m["bytes"] for m in files.values()) <= FULL_HASH_LIMIT
        self.storage = self.manifest["storage"]
        names = DENSE_FILES if self.storage == "dense" else TOPK_FILES
        if set(files) != set(names):
            raise DistillError(f"teacher cache {str(self.path)!r} lists unexpected files; rebuild it with --rebuild")
        self.arrays = {n: _load_array(self.path / n, files[n], verify) for n in names}
        self.num_examples, self.views, self.num_classes = (int(self.manifest[k]) for k in ("num_examples", "views", "num_classes"))
        self.device = torch.device("cpu")

    def to(self, device: torch.device) -> CachedTeacher:
        self.device = torch.device(device)
        return self

    def lookup(self, index: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        """Cached logits `(B, C)` float32 (CPU) for example positions `index (B,)` and view ids `view (B,)`."""
        i = index.detach().cpu().numpy().astype(np.int64)
        v = view.detach().cpu().numpy().astype(np.int64)
        if i.size and (i.min() < 0 or i.max() >= self.num_examples):
            raise DistillError(
                f"batch index {int(i.max())} is outside the cache's {self.num_examples} examples; "
                "the cache was built for another training set — rebuild it"
            )
        if v.size and (v.min() < 0 or v.max() >= self.views):
            raise DistillError(f"view {int(v.max())} is not in the cache ({self.views} views); set augment.views={self.views}")
        if self.storage == "dense":
            return torch.from_numpy(np.asarray(self.arrays["logprobs.npy"][i, v], dtype=np.float32))
        logp = torch.from_numpy(np.asarray(self.arrays["topk_logprobs.npy"][i, v], dtype=np.float32))  # (B, k)
        idx = torch.from_numpy(np.asarray(self.arrays["topk_indices.npy"][i, v], dtype=np.int64))  # (B, k)
        rest = torch.from_numpy(np.asarray(self.arrays["rest.npy"][i, v], dtype=np.float32))  # (B,)
        return topk_to_logits(logp, idx, rest, self.num_classes)

    def __call__(self, batch: Any) -> torch.Tensor:
        index = index_of(batch)
        if index is None:
            raise DistillError(
                "a cached teacher needs batch['index'] (dataset positions); wrap the dataset in distill.data.Indexed"
            )
        view = batch.get("view") if isinstance(batch, dict) else None
        view = torch.zeros_like(index) if view is None else view
        return self.lookup(index, view).to(self.device, non_blocking=True)


def topk_to_logits(logp: torch.Tensor, idx: torch.Tensor, rest: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Top-k log-probs `(B, k)` at class ids `idx (B, k)` plus remaining mass `rest (B,)` -> log-probs `(B, C)`,
    with `rest` spread uniformly over the other C - k classes and the whole renormalised to sum to 1."""
    b, k = logp.shape
    other = (rest.clamp_min(0) / max(num_classes - k, 1)).unsqueeze(-1)  # (B, 1)
    probs = other.expand(b, num_classes).clone() if num_classes > k else torch.zeros(b, num_classes)
    probs.scatter_(-1, idx, logp.exp())
    probs = probs / probs.sum(-1, keepdim=True)
    return probs.clamp_min(1e-30).log()


def fidelity(live: torch.Tensor, cached: torch.Tensor, temperature: float) -> dict[str, float]:
    """How close cached outputs are to live ones: mean KL(live || cached) at T=1 and at `temperature`, top-1
    agreement and the largest absolute probability difference. Logits `(B, C)`."""
    out: dict[str, float] = {}
    for name, t in (("kl_T1", 1.0), ("kl_T", float(temperature))):
        log_p = F.log_softmax(live.float() / t, -1)
        log_q = F.log_softmax(cached.float() / t, -1)
        out[name] = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    out["temperature"] = float(temperature)
    out["top1_agreement"] = float((live.argmax(-1) == cached.argmax(-1)).float().mean())
    out["max_abs_prob_diff"] = float((live.softmax(-1) - cached.float().softmax(-1)).abs().max())
    return out


def write_manifest(path: Path, doc: dict[str, Any]) -> None:
    """Atomic: temp file, fsync, rename. Called last, so a cache is complete iff its manifest exists."""
    doc = {"format": FORMAT, "version": VERSION, **doc,
           "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    write_json_atomic(path / MANIFEST, doc)

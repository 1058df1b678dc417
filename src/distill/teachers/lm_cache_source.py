"""The LLM logit cache as a run's teacher source, and the token sequences a cache is built over.

`LMCacheSource(cache)` serves an `LMLogitCache` to `lm_cached`: each batch row's cached entries placed by its
`index` at its real token positions (right- or left-padded), refusing rows whose tokens differ from the cache's.
`sequences_of(dataset)` lists a token dataset's real tokens per example, and `sequences_sha256` fingerprints them
(which data a cache was built over).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..batch import attention_mask_of, index_of
from ..errors import DistillError
from .lm_cache import LMLogitCache


def sequences_of(dataset: Any) -> list[torch.Tensor]:
    """The token sequences of a token dataset (items with `input_ids`, optional `attention_mask`): per example, its
    real tokens in dataset order — what an LLM logit cache over that dataset holds."""
    out = []
    for i in range(len(dataset)):
        item = dataset[i]
        if not isinstance(item, dict) or "input_ids" not in item:
            raise DistillError("an LLM logit cache is built over token datasets (items with input_ids); this dataset "
                               f"gives {type(item).__name__} items")
        ids = torch.as_tensor(item["input_ids"]).reshape(-1)
        attn = item.get("attention_mask")
        out.append(ids if attn is None else ids[torch.as_tensor(attn).reshape(-1).bool()])
    return out


def sequences_sha256(sequences: Sequence[torch.Tensor]) -> str:
    """SHA-256 of token sequences (their lengths and ids, in order): which data a cache was built over."""
    h = hashlib.sha256(f"n={len(sequences)}|".encode())
    for seq in sequences:
        h.update(f"{len(seq)}|".encode())
        h.update(torch.as_tensor(seq, dtype=torch.long).numpy().tobytes())
    return h.hexdigest()


class LMCacheSource:
    """The teacher *source* of a run that learns from an LLM logit cache (method `lm_cached`; the pipeline opens it
    from `distill.cache` on a `task: causal_lm` recipe): for a training batch, the cached entries placed at the
    batch's real token positions, so no teacher runs while training.

    A batch row is the training example `batch["index"]` (the dataset position the cache was built over); its real
    tokens (`attention_mask`, right- or left-padded) must be the cached sequence, else a one-line `DistillError`
    (another dataset, order or tokenisation). Entry t is the teacher's prediction at position t, i.e. of token t + 1:
    the same position as the student's `logits[:, t]` and the next-token label `next_token_labels(batch)[:, t]`, so
    no shift is applied here. Unlike live or classifier-cache sources it gives no logits: `__call__` refuses."""

    outputs = "lm-cache"  # what a method reads from it (`Method.teacher_outputs`)

    def __init__(self, cache: LMLogitCache | str | Path, *, expect: dict[str, Any] | None = None) -> None:
        self.cache = cache if isinstance(cache, LMLogitCache) else LMLogitCache(cache, expect=expect)
        self.device = torch.device("cpu")

    @property
    def form(self) -> str:
        return self.cache.form

    @property
    def temperature(self) -> float:
        return self.cache.temperature

    def check_sequences(self, sequences: Sequence[torch.Tensor]) -> None:
        """Refuse (one line) unless the cache holds exactly `sequences` (the training set's tokens), in order."""
        cached = self.cache.manifest.get("num_sequences")
        if cached != len(sequences):
            raise DistillError(f"logit cache {str(self.cache.path)!r} holds {cached} sequences but the training set has "
                               f"{len(sequences)}: it was built for other data; rebuild it (distill cache RECIPE --rebuild)")
        for i, seq in enumerate(sequences):
            a, b = int(self.cache.offsets[i]), int(self.cache.offsets[i + 1])
            if b - a != len(seq) or not np.array_equal(self.cache.arrays["tokens"][a:b].astype(np.int64),
                                                       torch.as_tensor(seq).numpy().astype(np.int64)):
                raise DistillError(f"logit cache {str(self.cache.path)!r} was built for other data (training sequence "
                                   f"{i} differs); rebuild it (distill cache RECIPE --rebuild)")

    def to(self, device: torch.device | str) -> LMCacheSource:
        self.device = torch.device(device)
        return self

    def __call__(self, batch: Any) -> torch.Tensor:
        raise DistillError("an LLM logit cache holds sparse next-token entries, not teacher logits; learn from it with "
                           "distill.method: lm_cached (or remove distill.cache to run the teacher live)")

    def entries(self, batch: Any) -> dict[str, torch.Tensor]:
        """The cached entries of `batch`'s rows at their token positions: `(B, T, k)` (`logprobs`, `ids`; or `ids`,
        `weights`) and `(B, T)` (`rest` or `entropy`), zeros elsewhere, plus `mask (B, T)` bool: positions holding an
        entry whose next token is in the sequence (every real position but each row's last)."""
        index = index_of(batch)
        ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
        if index is None or not isinstance(ids, torch.Tensor) or ids.ndim != 2:
            raise DistillError("an LLM logit cache serves batches of token ids with an `index` (the example's position "
                               "in the dataset the cache was built over)")
        attn = attention_mask_of(batch)
        real = torch.ones_like(ids, dtype=torch.bool) if attn is None else attn.to(ids.device)
        rows = [self.cache.sequence(int(i)) for i in index.reshape(-1).tolist()]
        bsz, length = ids.shape
        out: dict[str, torch.Tensor] = {}
        for key in rows[0]:
            if key == "tokens":
                continue
            width = [max(r[key].shape[1] for r in rows)] if rows[0][key].dim() == 2 else []
            out[key] = torch.zeros(bsz, length, *width, dtype=rows[0][key].dtype)
        out["mask"] = torch.zeros(bsz, length, dtype=torch.bool)
        ids_cpu, real_cpu = ids.cpu(), real.cpu()
        for n, (i, r) in enumerate(zip(index.reshape(-1).tolist(), rows)):
            pos = real_cpu[n].nonzero().squeeze(-1)
            if len(pos) != len(r["tokens"]) or not torch.equal(ids_cpu[n, pos], r["tokens"]):
                raise DistillError(f"batch row {n} (example {i}) is not the sequence the logit cache "
                                   f"{str(self.cache.path)!r} holds for that example; rebuild the cache for this data")
            for key, value in out.items():
                if key == "mask":
                    continue
                if value.dim() == 3:
                    value[n, pos, : r[key].shape[1]] = r[key]
                else:
                    value[n, pos] = r[key]
            out["mask"][n, pos[:-1]] = True  # the last real token has no next token to predict
        return {key: value.to(ids.device) for key, value in out.items()}

    def loss(self, student_logits: torch.Tensor, entries: dict[str, torch.Tensor], *, temperature: float,
             mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`(loss, kl)`: the form's loss (`LMLogitCache.loss`: top-k KL with the leftover bucket, or the sampled
        importance-weighted CE, both × T²) over `mask & entries["mask"]`, and its value as a KL(teacher ‖ student)
        estimate for logging (the sampled CE minus T² × the cached teacher entropy; top-k: the loss itself)."""
        loss = self.cache.loss(student_logits, entries, temperature=temperature, mask=mask)
        if self.form == "topk":
            return loss, loss.detach()
        keep = entries["mask"] if mask is None else mask & entries["mask"]
        entropy = (entries["entropy"].float() * keep).sum() / keep.sum().clamp(min=1)
        return loss, (loss.detach() - temperature**2 * entropy)

"""An offline logit cache for LLM distillation: a sparse summary of the teacher's next-token distribution at every
position of a set of token sequences, so training never runs the teacher.

Two forms (the losses that train against them are in `distill.losses.cached_lm`, which explains both):
- `topk`:    per position the teacher's k largest log-probabilities (float16), their ids (uint16 when the vocabulary
             has at most 65,536 ids, as SmolLM2's 49,152 does; else int32) and the leftover mass `rest` (float16),
             computed from the float32 distribution as the mass of the other ids (never negative). 4k + 2 bytes.
- `sampled`: random-sampling KD (Anshumann et al. 2025): K ids drawn with replacement from a proposal (the teacher
             at `temperature`, optionally flattened by `proposal_temperature`), kept as distinct ids with importance
             weights `count / K * p / q` (float16), stored ragged — a peaked position draws few distinct ids — with
             the number of distinct ids per position (`counts`, uint8 for K < 256), plus the teacher's entropy per
             position (float16, to turn the CE estimate into a KL estimate). 4·distinct + 3 bytes per position.
             Read back as `(L, S)` per sequence, padded with id 0 and weight 0. Unbiased for CE(teacher, student).

Positions are aligned with the tokens: entry t describes the teacher's prediction *at* position t (the distribution
of token t + 1), as `logits[:, t]` would. A directory holds `cache.safetensors` (all sequences concatenated;
`offsets` marks where each starts) and `manifest.json`, written last and atomically, so a directory without a
manifest is an interrupted build. The manifest records the teacher's identity (weights or GGUF file SHA-256, vocabulary
size, tokenizer SHA-256) and a cache built with another teacher or tokenizer is refused in one line.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from ..errors import DistillError
from ..files import write_json_atomic
from ..losses.cached_lm import sampled_ce_loss, topk_kl_loss
from .cache import sha256_file, teacher_fingerprint

FORMAT = "distill-lm-logit-cache"
VERSION = 1
FILE = "cache.safetensors"
MANIFEST = "manifest.json"
FORMS = ("topk", "sampled")
IDENTITY_KEYS = {"teacher_sha256": "another teacher (weights differ)", "vocab_size": "a teacher with another vocabulary size",
                 "tokenizer_sha256": "another tokenizer"}


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 over the tokenizer's vocabulary (token -> id, sorted) and its special tokens."""
    h = hashlib.sha256()
    for token, index in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        h.update(f"{index}\t{token}\n".encode("utf-8", "surrogatepass"))
    h.update(json.dumps(sorted(map(str, getattr(tokenizer, "all_special_tokens", [])))).encode())
    return h.hexdigest()


def teacher_identity(model: torch.nn.Module, tokenizer: Any = None, *, name: str | None = None) -> dict[str, Any]:
    """What a cache must match: `{"teacher", "teacher_sha256", "vocab_size", "tokenizer_sha256"}`. A model loaded from
    a file by `distill.models.causal_lm` is identified by that file's SHA-256 (`model.distill_source`), others by the
    SHA-256 of their state dict."""
    source = getattr(model, "distill_source", None)
    if source and "sha256" not in source:
        source["sha256"] = sha256_file(Path(source["path"]))
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if vocab is None:
        vocab = model.get_output_embeddings().weight.shape[0]
    return {
        "teacher": name or (Path(source["path"]).name if source else type(model).__name__),
        "teacher_sha256": source["sha256"] if source else teacher_fingerprint(model),
        "vocab_size": int(vocab),
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer) if tokenizer is not None else None,
    }


def _id_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.int32)


def _as_sequences(sequences: Iterable[Sequence[int] | torch.Tensor], vocab_size: int) -> list[torch.Tensor]:
    out = []
    for i, seq in enumerate(sequences):
        t = torch.as_tensor(seq, dtype=torch.long).reshape(-1)
        if t.numel() == 0:
            raise DistillError(f"sequence {i} is empty; every cached sequence needs at least one token")
        if int(t.min()) < 0 or int(t.max()) >= vocab_size:
            raise DistillError(
                f"sequence {i} has token id {int(t.max()) if int(t.max()) >= vocab_size else int(t.min())} outside the "
                f"teacher's vocabulary [0, {vocab_size}); tokenize with the teacher's tokenizer"
            )
        out.append(t)
    if not out:
        raise DistillError("no sequences to cache; pass at least one token sequence")
    return out


@torch.inference_mode()
def _teacher_logprobs(model: torch.nn.Module, batch: list[torch.Tensor], temperature: float) -> list[torch.Tensor]:
    """Per sequence, float32 `(L, V)` log-softmax of the teacher's logits / T (right-padded batch, causal model)."""
    length = max(len(s) for s in batch)
    ids = torch.zeros(len(batch), length, dtype=torch.long)
    attn = torch.zeros(len(batch), length, dtype=torch.long)
    for row, seq in enumerate(batch):
        ids[row, : len(seq)] = seq
        attn[row, : len(seq)] = 1
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.float().cpu()  # (B, L, V)
    return [torch.log_softmax(logits[row, : len(seq)] / temperature, -1) for row, seq in enumerate(batch)]


def topk_entries(logp: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """Top-k summary of log-probs `(N, V)`: `logprobs (N, k)`, `ids (N, k)`, `rest (N,)` (float32/long)."""
    values, ids = logp.topk(min(k, logp.shape[-1]), -1)
    rest = logp.scatter(-1, ids, -math.inf).logsumexp(-1).exp()  # mass of the other ids, >= 0 by construction
    return {"logprobs": values, "ids": ids, "rest": rest}


def sampled_entries(
    logp: torch.Tensor, samples: int, proposal_temperature: float, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Random-sampling summary of log-probs `(N, V)`: `samples` draws with replacement from the proposal
    `q ∝ p^(1 / proposal_temperature)`, as distinct `ids (N, K)` with weights `count / K * p / q` `(N, K)` (0 on
    unused slots, sorted by count) and the entropy `(N,)` of p."""
    log_q = logp if proposal_temperature == 1.0 else torch.log_softmax(logp / proposal_temperature, -1)
    draws = torch.multinomial(log_q.exp(), samples, replacement=True, generator=generator)  # (N, K)
    counts = torch.zeros_like(logp).scatter_add_(-1, draws, torch.ones_like(draws, dtype=logp.dtype))
    count, ids = counts.topk(samples, -1)  # distinct ids first, then zero-count slots
    ratio = (logp.gather(-1, ids) - log_q.gather(-1, ids)).exp()  # p / q
    weights = torch.where(count > 0, count / samples * ratio, torch.zeros_like(count))
    ids = torch.where(count > 0, ids, torch.zeros_like(ids))
    entropy = -(logp.exp() * logp).nan_to_num().sum(-1)
    return {"ids": ids, "weights": weights, "entropy": entropy}


def build_lm_cache(
    model: torch.nn.Module,
    sequences: Iterable[Sequence[int] | torch.Tensor],
    out: str | Path,
    *,
    identity: dict[str, Any],
    form: str = "topk",
    k: int = 64,
    samples: int = 64,
    temperature: float = 1.0,
    proposal_temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 4,
    notes: dict[str, Any] | None = None,
    progress: bool = False,
) -> LMLogitCache:
    """Run the teacher once over `sequences` (token id lists) and write a `form` cache to the directory `out`.

    `identity` comes from `teacher_identity(model, tokenizer)`; `notes` (e.g. how the sequences were made) go into
    the manifest as they are. `topk` stores T = 1 log-probabilities (the loss tempers them); `sampled` draws from the
    teacher at `temperature` and the loss must use the same T. Returns the opened cache."""
    if form not in FORMS:
        raise DistillError(f"logit cache form {form!r} is not one of {', '.join(FORMS)}")
    width = k if form == "topk" else samples
    if not 1 <= width <= int(identity["vocab_size"]):
        raise DistillError(f"{'k' if form == 'topk' else 'samples'}={width} must be in [1, vocabulary size]")
    if temperature <= 0 or proposal_temperature <= 0 or batch_size < 1:
        raise DistillError("temperature and proposal_temperature must be > 0 and batch_size >= 1")
    if form == "topk" and temperature != 1.0:
        raise DistillError("a top-k cache stores the teacher at T = 1 (the loss applies T); leave temperature at 1")
    vocab = int(identity["vocab_size"])
    seqs = _as_sequences(sequences, vocab)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DistillError(f"logit cache path {str(out)!r} is a file; choose a directory")
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # from here on the directory is an incomplete cache until the end
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    batches = range(0, len(seqs), batch_size)
    if progress:
        from rich.progress import track

        batches = track(batches, description=f"caching {form} teacher outputs")
    try:
        for start in batches:
            for logp in _teacher_logprobs(model, seqs[start : start + batch_size], temperature):
                if logp.shape[-1] != vocab:
                    raise DistillError(
                        f"the teacher predicts {logp.shape[-1]} tokens but its identity says vocab_size={vocab}; "
                        "make the identity with teacher_identity(this model, its tokenizer)"
                    )
                entry = topk_entries(logp, k) if form == "topk" else sampled_entries(logp, samples, proposal_temperature, generator)
                for key, value in entry.items():
                    parts.setdefault(key, []).append(value)
    finally:
        model.train(was_training)
    arrays = _pack(parts, seqs, form, vocab)
    tmp = out / f".{FILE}.tmp"
    save_file(arrays, str(tmp))
    os.replace(tmp, out / FILE)
    tokens = int(arrays["tokens"].shape[0])
    per_position = sum(a.nbytes for n, a in arrays.items() if n not in ("tokens", "offsets"))
    doc = {
        **{key: identity.get(key) for key in ("teacher", *IDENTITY_KEYS)},
        "form": form, "k": int(arrays["ids"].shape[1]) if form == "topk" else None,
        "samples": samples if form == "sampled" else None,
        "slots": int(arrays["ids"].shape[1]) if form == "topk" else int(arrays["counts"].max()),
        "temperature": temperature, "proposal_temperature": proposal_temperature if form == "sampled" else None,
        "seed": seed, "num_sequences": len(seqs), "num_tokens": tokens,
        "bytes_per_token": per_position / tokens, "bytes_per_token_with_tokens": (per_position + arrays["tokens"].nbytes) / tokens,
        "mean_rest": float(arrays["rest"].astype(np.float64).mean()) if form == "topk" else None,
        "file": {"name": FILE, "bytes": (out / FILE).stat().st_size, "sha256": sha256_file(out / FILE)},
        "notes": notes or {},
    }
    _write_manifest(out, doc)
    return LMLogitCache(out, expect=identity)


def _pack(parts: dict[str, list[torch.Tensor]], seqs: list[torch.Tensor], form: str, vocab: int) -> dict[str, np.ndarray]:
    id_dtype = _id_dtype(vocab)
    cat = {key: torch.cat(value) for key, value in parts.items()}
    arrays = {
        "tokens": torch.cat(seqs).numpy().astype(id_dtype),
        "offsets": np.cumsum([0] + [len(s) for s in seqs]).astype(np.int64),
    }
    if form == "topk":
        arrays |= {"logprobs": cat["logprobs"].numpy().astype(np.float16), "ids": cat["ids"].numpy().astype(id_dtype),
                   "rest": cat["rest"].numpy().astype(np.float16)}
    else:
        used = cat["weights"] > 0  # (N, K): distinct ids come first in each row, so this keeps a ragged prefix
        counts = used.sum(-1).numpy()
        arrays |= {"ids": cat["ids"][used].numpy().astype(id_dtype),
                   "weights": cat["weights"][used].numpy().astype(np.float16),
                   "counts": counts.astype(np.uint8 if counts.max() < 256 else np.uint16),
                   "entropy": cat["entropy"].numpy().astype(np.float16)}
    return {key: np.ascontiguousarray(value) for key, value in arrays.items()}


def _write_manifest(directory: Path, doc: dict[str, Any]) -> None:
    """Atomic (temp file, fsync, rename) and last: a cache is complete iff its manifest exists."""
    doc = {"format": FORMAT, "version": VERSION, **doc,
           "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    write_json_atomic(directory / MANIFEST, doc)


def read_lm_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a complete LM logit cache; one-line `DistillError` for a missing, partial or foreign one."""
    path = Path(path)
    if not path.is_dir():
        raise DistillError(f"logit cache {str(path)!r} not found; build it with distill.teachers.lm_cache.build_lm_cache")
    if not (path / MANIFEST).is_file():
        raise DistillError(f"logit cache {str(path)!r} is incomplete (no {MANIFEST}: the build was interrupted); rebuild it")
    try:
        doc = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise DistillError(f"logit cache manifest in {str(path)!r} is corrupt; rebuild the cache") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise DistillError(f"{str(path)!r} is not a distill LM logit cache (v{VERSION}); rebuild it")
    return doc


class LMLogitCache:
    """An opened cache: `len(cache)` sequences; `cache.batch([i, j])` gives padded tensors for training.

        cache = LMLogitCache("caches/smollm2-top64", expect=teacher_identity(teacher, tokenizer))
    """

    def __init__(self, path: str | Path, *, expect: dict[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.manifest = read_lm_manifest(self.path)
        for key, what in IDENTITY_KEYS.items():
            if expect is not None and expect.get(key) is not None and self.manifest.get(key) != expect[key]:
                raise DistillError(
                    f"logit cache {str(self.path)!r} was built with {what} ({self.manifest.get('teacher')!r}, "
                    f"{key} {str(self.manifest.get(key))[:12]} != {str(expect[key])[:12]}); rebuild it with this teacher"
                )
        file, meta = self.path / FILE, self.manifest["file"]
        if not file.is_file() or file.stat().st_size != meta["bytes"] or sha256_file(file) != meta["sha256"]:
            raise DistillError(f"logit cache file {str(file)!r} is missing, truncated or corrupt; rebuild the cache")
        self.arrays = load_file(str(file))
        self.form = self.manifest["form"]
        self.vocab_size = int(self.manifest["vocab_size"])
        self.temperature = float(self.manifest["temperature"])
        self.offsets = self.arrays["offsets"]
        if self.form == "sampled":  # where each position's ragged run of (id, weight) starts
            self.starts = np.concatenate([[0], np.cumsum(self.arrays["counts"], dtype=np.int64)])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def sequence(self, i: int) -> dict[str, torch.Tensor]:
        """Sequence i: `tokens (L,)` long plus its per-position entries (`(L, k)` ids long, values float32)."""
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        out = {}
        for key, value in self.arrays.items():
            if key in ("offsets", "counts") or (self.form == "sampled" and key in ("ids", "weights")):
                continue
            t = torch.from_numpy(np.asarray(value[a:b]))
            out[key] = t.long() if key in ("tokens", "ids") else t.float()
        if self.form == "sampled":
            counts = torch.from_numpy(self.arrays["counts"][a:b].astype(np.int64))  # (L,)
            lo, hi = int(self.starts[a]), int(self.starts[b])
            row = torch.repeat_interleave(torch.arange(b - a), counts)
            col = torch.arange(hi - lo) - torch.repeat_interleave(torch.from_numpy(self.starts[a:b] - lo), counts)
            width = max(int(counts.max()), 1)
            out["ids"] = torch.zeros(b - a, width, dtype=torch.long)
            out["weights"] = torch.zeros(b - a, width)
            out["ids"][row, col] = torch.from_numpy(self.arrays["ids"][lo:hi].astype(np.int64))
            out["weights"][row, col] = torch.from_numpy(self.arrays["weights"][lo:hi].astype(np.float32))
        return out

    def batch(self, indices: Sequence[int], masks: Sequence[Sequence[bool]] | None = None) -> dict[str, torch.Tensor]:
        """Right-padded batch: `input_ids (B, T)`, `attention_mask (B, T)`, `mask (B, T)` bool (real positions but
        each sequence's last, and within them `masks[i]` when given, one bool per position of every cached sequence),
        and the cached entries `(B, T, k)` / `(B, T)` (zeros on padding).

        The last position of a sequence never counts, whatever `masks` says: its entry is the teacher's prediction of
        a token *after* the sequence, which no student position is trained against (`next_token_labels` gives it no
        target either). It is stored anyway (2-4 bytes per sequence) so entry t stays the prediction at position t."""
        rows = [self.sequence(int(i)) for i in indices]
        length = max(len(r["tokens"]) for r in rows)
        out: dict[str, torch.Tensor] = {}
        for key in rows[0]:
            shape = (len(rows), length, *[max(r[key].shape[d] for r in rows) for d in range(1, rows[0][key].dim())])
            out[key] = torch.zeros(shape, dtype=rows[0][key].dtype)
            for n, r in enumerate(rows):
                if r[key].dim() == 2:
                    out[key][n, : len(r[key]), : r[key].shape[1]] = r[key]
                else:
                    out[key][n, : len(r[key])] = r[key]
        out["input_ids"] = out.pop("tokens")
        out["mask"] = torch.zeros(len(rows), length, dtype=torch.bool)
        for n, (i, r) in enumerate(zip(indices, rows)):
            keep = torch.ones(len(r["tokens"]), dtype=torch.bool) if masks is None else torch.tensor(masks[int(i)], dtype=torch.bool)
            if len(keep) != len(r["tokens"]):
                raise DistillError(f"mask for cached sequence {int(i)} has {len(keep)} entries, not {len(r['tokens'])}")
            out["mask"][n, : len(r["tokens"]) - 1] = keep[:-1]  # the last position predicts past the end
        out["attention_mask"] = torch.zeros(len(rows), length, dtype=torch.long)
        for n, r in enumerate(rows):
            out["attention_mask"][n, : len(r["tokens"])] = 1
        return out

    def loss(self, student_logits: torch.Tensor, batch: dict[str, torch.Tensor], *, temperature: float = 1.0,
             mask: torch.Tensor | None = None) -> torch.Tensor:
        """The form's loss for student logits `(B, T, V)` aligned with `batch` positions (`mask` defaults to the
        batch's `mask`: real positions with a next token; a given `mask` is combined with it)."""
        mask = batch["mask"] if mask is None else mask & batch["mask"]
        if self.form == "topk":
            return topk_kl_loss(student_logits, batch["logprobs"], batch["ids"], batch["rest"], temperature=temperature, mask=mask)
        if temperature != self.temperature:
            raise DistillError(f"this sampled cache was drawn at T={self.temperature}; train with temperature={self.temperature}")
        return sampled_ce_loss(student_logits, batch["ids"], batch["weights"], temperature=temperature, mask=mask)

"""Building an LLM logit cache over a dataset's token sequences as `distill cache RECIPE` does for a `task: causal_lm`
recipe (`task_kinds.CausalLM.build_cache`): settings checked before anything is written, an up-to-date cache reused,
a stale or foreign one refused unless `rebuild`, and the fidelity on held-out sequences (the recipe's validation
split) recorded in the manifest.

Nothing half-written: the cache is built in a sibling directory `.<name>.partial` and moved into place only once its
manifest (with the fidelity) is complete; a failure or an interrupt removes it and leaves an existing cache as it
was. `distill.teachers.lm_cache` describes the forms and the file layout.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import DistillError
from ..files import write_json_atomic
from .lm_cache import FILE, FORMS, MANIFEST, LMLogitCache, build_lm_cache, read_lm_manifest, teacher_identity
from .lm_cache_source import sequences_sha256
from .lm_fidelity import cache_fidelity

KNOWN_FILES = {FILE, MANIFEST, f".{FILE}.tmp", f".{MANIFEST}.tmp"}
FIDELITY_KEYS = ("ce_gap", "ce_abs_error", "kl_gap", "kl_uniform_tail", "rest", "ce_live", "entropy_live", "positions")


def check_lm_cache_settings(form: str, k: int, temperature: float, vocab_size: int | None = None) -> None:
    """One-line `DistillError` for settings no cache can have (before any model is loaded or file written)."""
    if form not in FORMS:
        raise DistillError(f"an LLM logit cache is {' or '.join(FORMS)} (--storage), not {form!r}")
    what = "k (ids kept per position)" if form == "topk" else "k (teacher samples drawn per position)"
    if not isinstance(k, int) or k < 1 or (vocab_size is not None and k > vocab_size):
        top = f"the vocabulary size {vocab_size}" if vocab_size is not None else "the vocabulary size"
        raise DistillError(f"{what} = {k} must be between 1 and {top}")
    if not temperature > 0:
        raise DistillError(f"--temperature {temperature} must be > 0")
    if form == "topk" and temperature != 1.0:
        raise DistillError("a top-k cache stores the teacher at T = 1 (its loss applies the recipe's T); leave "
                           "--temperature at 1 or use --storage sampled")


def target_masks(dataset: Any, sequences: Sequence[torch.Tensor]) -> list[list[bool]]:
    """Per sequence of a token dataset, True at the positions whose next token is a target (its label is not -100;
    without labels every next token is): where a cached entry is a distillation target. The last is always False."""
    out = []
    for i, seq in enumerate(sequences):
        item = dataset[i]
        labels = item.get("labels") if isinstance(item, dict) else None
        n = len(seq)
        if labels is None or torch.as_tensor(labels).ndim != 1:
            out.append([True] * (n - 1) + [False])
            continue
        labels = torch.as_tensor(labels).reshape(-1)
        attn = item.get("attention_mask")
        if attn is not None:
            labels = labels[torch.as_tensor(attn).reshape(-1).bool()]
        nxt = (labels[1:] != -100).tolist()
        out.append(nxt + [False])
    return out


def held_out_fidelity(teacher: torch.nn.Module, sequences: Sequence[torch.Tensor], masks: Sequence[Sequence[bool]],
                      *, identity: dict[str, Any], form: str, k: int, temperature: float, seed: int,
                      batch_size: int) -> dict[str, float]:
    """Cache `sequences` (held-out text) with the same settings and compare every masked position with the live
    teacher at `temperature` (`distill.teachers.lm_fidelity.cache_fidelity`, the teacher scoring itself):
    `ce_gap` = mean(cached NLL estimate − live NLL) — the cached-vs-live NLL gap —, `ce_abs_error` per position,
    `kl_gap` (the loss-value KL bias; the live KL is 0), for top-k `kl_uniform_tail` = KL(live ‖ top-k with the
    leftover spread uniformly) and `rest` (leftover mass on these positions)."""
    if not any(any(m) for m in masks):  # no targets in the held-out text: every position with a next token
        masks = [[True] * (len(s) - 1) + [False] for s in sequences]
    device = next(teacher.parameters()).device
    was_training = teacher.training
    teacher.eval()

    def live(tokens: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return teacher(input_ids=tokens.unsqueeze(0).to(device)).logits[0].float().cpu() / temperature

    try:
        with tempfile.TemporaryDirectory(prefix="distill-lm-fidelity-") as tmp:
            cache = build_lm_cache(teacher, sequences, Path(tmp) / "held-out", identity=identity, form=form, k=k,
                                   samples=k, temperature=temperature, seed=seed + 1, batch_size=batch_size)
            fid = cache_fidelity(cache, live, masks=masks)
    finally:
        teacher.train(was_training)
    out = {key: float(fid[key]) for key in FIDELITY_KEYS if key in fid}
    out["positions"] = int(fid["positions"])
    out["sequences"] = len(sequences)
    return out


def build_lm_cache_dir(
    teacher: torch.nn.Module,
    sequences: Sequence[torch.Tensor],
    out: str | Path,
    *,
    tokenizer: Any = None,
    form: str = "sampled",
    k: int = 64,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    held_out: Sequence[torch.Tensor] | None = None,
    held_out_masks: Sequence[Sequence[bool]] | None = None,
    rebuild: bool = False,
    notes: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Cache `teacher` over `sequences` in the directory `out` (form `topk` with k ids, or `sampled` with k draws
    at `temperature`); returns the manifest plus `up_to_date` (True: an existing cache with these settings for this
    teacher, tokenizer and data was kept). With `held_out`, its `fidelity` on those sequences (masked by
    `held_out_masks`) is in the manifest. One-line `DistillError` for bad settings, a file or foreign files at
    `out`, or (without `rebuild`) a partial cache or one built with other settings, teacher, tokenizer or data."""
    identity = teacher_identity(teacher, tokenizer)
    vocab = int(identity["vocab_size"])
    check_lm_cache_settings(form, k, temperature, vocab)
    data_sha = sequences_sha256(sequences)
    want = {"form": form, "k": k if form == "topk" else None, "samples": k if form == "sampled" else None,
            "temperature": temperature, "seed": seed, "data_sha256": data_sha}
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DistillError(f"cache path {str(out)!r} is a file; choose a directory with --out")
    if out.is_dir() and any(out.iterdir()):
        if (out / MANIFEST).is_file() and not rebuild:
            try:
                doc = LMLogitCache(out, expect=identity).manifest
            except DistillError as exc:
                raise DistillError(f"{exc} (pass --rebuild to replace it)") from None
            for key, value in want.items():
                if doc.get(key) != value:
                    shown = "other data" if key == "data_sha256" else f"{key}={doc.get(key)}, not {value}"
                    raise DistillError(f"logit cache {str(out)!r} was built with {shown}; pass --rebuild to replace it")
            return {**doc, "up_to_date": True}
        if not rebuild:
            raise DistillError(f"{str(out)!r} holds a partial cache or other files; pass --rebuild to replace it")
        strangers = sorted(p.name for p in out.iterdir() if p.name not in KNOWN_FILES)
        if strangers:
            raise DistillError(f"{str(out)!r} holds files that are not an LLM logit cache ({strangers[0]}, ...); "
                               "choose another --out")
    tmp = out.parent / f".{out.name}.partial"
    old = out.parent / f".{out.name}.old"
    try:
        shutil.rmtree(tmp, ignore_errors=True)  # a previous interrupted build's leftovers
        cache = build_lm_cache(teacher, sequences, tmp, identity=identity, form=form, k=k, samples=k,
                               temperature=temperature, seed=seed, batch_size=batch_size, notes=notes, progress=progress)
        doc = {**cache.manifest, "data_sha256": data_sha}
        if held_out:
            masks = held_out_masks if held_out_masks is not None else [[True] * (len(s) - 1) + [False] for s in held_out]
            doc["fidelity"] = held_out_fidelity(teacher, held_out, masks, identity=identity, form=form, k=k,
                                                temperature=temperature, seed=seed, batch_size=batch_size)
        write_json_atomic(tmp / MANIFEST, doc)
        if out.exists():  # replace the old cache only now, with the complete new one
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as exc:
        _roll_back(tmp, old, out)
        raise DistillError(f"writing the logit cache {str(out)!r} failed ({exc.strerror or exc}); nothing was "
                           "replaced — free disk space or choose another --out") from None
    except BaseException:
        _roll_back(tmp, old, out)
        raise
    return {**read_lm_manifest(out), "up_to_date": False}


def _roll_back(tmp: Path, old: Path, out: Path) -> None:
    """After a failed or interrupted build: drop the partial cache, and put the old one back if it was moved aside
    (an interrupt between the two renames)."""
    shutil.rmtree(tmp, ignore_errors=True)
    if old.exists() and not out.exists():
        os.replace(old, out)

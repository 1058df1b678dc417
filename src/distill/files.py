"""Atomic JSON writes for manifests: a reader finds the old file or the whole new one, never a half-written one
(temp file in the same directory, fsync, rename). Caches write their manifest last, so a manifest means complete.
Also: a state dict's tensors each written once (tied weights), for the safetensors writers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def write_json_atomic(path: Path, doc: Any) -> None:
    tmp = path.parent / f".{path.name}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(doc, indent=2))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def unique_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """`(tensors, aliases)` to write a state dict as safetensors: the tensors on CPU, contiguous, each stored once.
    A name whose tensor is the very same view as an earlier name's (tied input and output embeddings of a language
    model) is not stored again but listed in `aliases` `{name: stored name}`, for the file's metadata (`alias_metadata`); `with_aliases` sets it again on read. A tensor only partly overlapping another
    is copied (safetensors refuses shared memory)."""
    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple, str] = {}  # (device, storage, offset, shape, stride, dtype) -> the name stored
    stored: set[int] = set()  # storages of the tensors written
    for k, v in state.items():
        v = v.detach()
        view = ((v.device, v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), v.stride(), v.dtype)
                if v.numel() else None)
        if view is not None and view in views:
            aliases[k] = views[view]
            continue
        t = v.contiguous().cpu()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in stored:
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        if view is not None:
            views[view] = k
            stored.add(ptr)
        out[k] = t
    return out, aliases


ALIASES_KEY = "distill_aliases"  # safetensors header entry: JSON {name: stored name} of tied tensors written once


def alias_metadata(aliases: dict[str, str]) -> dict[str, str]:
    """The header entry recording `unique_tensors`' aliases (empty when there are none)."""
    return {ALIASES_KEY: json.dumps(aliases, sort_keys=True)} if aliases else {}


def with_aliases(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, torch.Tensor]:
    """`state` plus every alias recorded in a safetensors file's `metadata` under `ALIASES_KEY` (see
    `unique_tensors`), bound to the tensor it names. Other metadata entries are never read as aliases."""
    try:
        aliases = json.loads(metadata.get(ALIASES_KEY) or "{}")
    except json.JSONDecodeError:
        aliases = {}
    for name, kept in (aliases.items() if isinstance(aliases, dict) else ()):
        if name not in state and kept in state:
            state[name] = state[kept]
    return state

"""Weights in and out. Ours are safetensors; third-party `.pth`/`.bin` only via `torch.load(weights_only=True)`,
never with a fallback to unpickling (a pickle can run arbitrary code)."""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save, save_file
from torch import nn

from ..errors import DistillError
from ..files import alias_metadata, unique_tensors, with_aliases


def _tensors(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict on CPU, contiguous, each tensor once, plus its aliases (`files.unique_tensors`): tied input and
    output embeddings are written once and tied again on read."""
    return unique_tensors(model.state_dict())


def state_bytes(model: nn.Module) -> bytes:
    """The model's state dict serialised as safetensors, as `save_weights` writes it (its on-disk size is `len()`)."""
    tensors, aliases = _tensors(model)
    return save(tensors, metadata=alias_metadata(aliases) or None)


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """Atomically write `model.state_dict()` as safetensors: temp file in the same folder, fsync, rename. Tied
    weights are written once (`_tensors`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors, aliases = _tensors(model)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=alias_metadata(aliases) or None)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, each alias in its metadata (`files.unique_tensors`: tied weights written
    once, by `save_weights`, `distill export` or safetensors' `save_model`) set to the stored tensor it names. Files
    with every tensor written out (older artifacts) read as before."""
    with safe_open(str(path), framework="pt") as fh:
        state = {k: fh.get_tensor(k) for k in fh.keys()}
        metadata = fh.metadata() or {}
    return with_aliases(state, metadata)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read weights: `.safetensors` directly; `.pth`/`.pt`/`.bin` with `weights_only=True` only."""
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"weights file {str(path)!r} not found; check the path")
    if path.suffix == ".safetensors":
        try:
            return _read_safetensors(path)
        except (SafetensorError, OSError, ValueError) as exc:
            raise DistillError(f"weights file {str(path)!r} is corrupt or truncated ({exc}); re-create it") from None
    if path.suffix in {".pth", ".pt", ".bin", ".ckpt"}:
        try:
            with warnings.catch_warnings():  # e.g. "pickle protocol 4": noise next to the one line that matters
                warnings.simplefilter("ignore")
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure here means "refused", never "try harder"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DistillError(
                f"refused to load {str(path)!r}: it is not a plain tensor file ({first[:160]}); "
                "convert it to safetensors from a trusted environment"
            ) from None
        if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
            obj = obj["state_dict"]
        if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise DistillError(f"{str(path)!r} does not hold a state dict of tensors; save model.state_dict()")
        return obj
    raise DistillError(f"unsupported weights format {path.suffix!r} for {str(path)!r}; use .safetensors (or .pth)")


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights into `model`, naming missing/unexpected keys or shape mismatches in one line on failure."""
    state = read_state_dict(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise DistillError(
            f"weights {str(Path(path))!r} do not fit the model ({detail}); check the model name and kwargs"
        ) from None
    if getattr(model, "distill_source", None) is not None:
        # no longer the file it was loaded from: caches then identify it by its weights, not by that file's hash
        model.distill_source = None
    return model

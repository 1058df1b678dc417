"""Writing a model so it can be rebuilt or run elsewhere.

- safetensors: the state dict, with a JSON metadata string under the header key `distill` (architecture name and
  kwargs, input shape, class count): one file is enough to rebuild the model (`distill.load_student`).
- ONNX: `torch.onnx.export` with the torch.export-based exporter (the default since torch 2.9; the TorchScript one is
  deprecated), batch dimension dynamic, one input `inputs` `(B, *input_shape)`, one output `logits` `(B, C)`, weights
  inside the file; the same metadata JSON in the model's `metadata_props`.

Every writer goes to a temporary name in the destination folder and renames at the end: no half-written files.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..batch import logits_of
from ..errors import DistillError
from ..files import alias_metadata, unique_tensors
from ._optional import require

METADATA_KEY = "distill"


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp)` on a temporary name next to `path`, then rename it to `path` (removing it on failure)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json(path: str | Path, doc: Mapping[str, Any]) -> Path:
    """Atomically write `doc` as indented JSON."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8"))


def save_safetensors(model: nn.Module, path: str | Path, metadata: Mapping[str, Any]) -> Path:
    """Write `model.state_dict()` to `path` with `metadata` (JSON-serialisable) in the safetensors header. Tied
    weights are written once, their other names recorded as aliases in the header (`files.unique_tensors`; the
    readers, `engine.io.read_state_dict`, tie them again)."""
    tensors, aliases = unique_tensors(model.state_dict())
    header = {**alias_metadata(aliases), METADATA_KEY: json.dumps(metadata, sort_keys=True)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The `distill` metadata of an exported `.safetensors` or `.onnx` file. Raises `DistillError` when the file is
    missing, unreadable, or was not written by `distill export`."""
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"exported model {str(path)!r} not found; check the path")
    try:
        if path.suffix == ".onnx":
            onnx = require("onnx", "export")
            props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        else:
            with safe_open(str(path), framework="pt") as fh:
                props = fh.metadata() or {}
        raw = props.get(METADATA_KEY)
        doc = json.loads(raw) if raw is not None else None
    except (SafetensorError, OSError, ValueError) as exc:
        raise DistillError(f"{str(path)!r} is not a readable .safetensors/.onnx file ({exc}); re-export it") from None
    if not isinstance(doc, dict) or "architecture" not in doc:
        raise DistillError(f"{str(path)!r} carries no distill metadata (architecture, input shape); "
                           "export it with `distill export RUN_DIR`")
    return doc


class _Logits(nn.Module):
    """The model with its output reduced to the logits tensor (an HF-style output object cannot be exported)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return logits_of(self.model(inputs))


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path,
                metadata: Mapping[str, Any] | None = None) -> Path:
    """Export `model` (eval mode, CPU) to ONNX at `path`, traced on `example` `(B, *input_shape)` with B dynamic.

    Raises `DistillError` when the model cannot be exported (one line with the exporter's reason)."""
    require("onnxscript", "export")  # the torch.export-based exporter translates through onnxscript
    onnx = require("onnx", "export")
    wrapped = _Logits(model).eval()
    if example.shape[0] < 2:  # a batch of 1 would let torch.export specialise the batch dimension to 1
        example = example.expand(2, *example.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1)

    def write(tmp: str) -> None:
        try:
            program = torch.onnx.export(wrapped, (example,), dynamo=True, input_names=["inputs"],
                                        output_names=["logits"], dynamic_shapes=({0: batch},), verbose=False)
        except Exception as exc:  # noqa: BLE001 - the exporter raises many types; all mean "cannot export"
            msg = " ".join(str(exc).split())[:200]
            raise DistillError(f"ONNX export failed ({type(exc).__name__}: {msg}); export --format safetensors "
                               "instead") from None
        proto = program.model_proto
        for key, value in ({METADATA_KEY: json.dumps(metadata, sort_keys=True)} if metadata else {}).items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save_model(proto, tmp)  # weights inside the file: small models, one artifact

    return atomic_write(path, write)


def set_onnx_metadata(path: str | Path, metadata: Mapping[str, Any]) -> Path:
    """Replace the `distill` metadata of the ONNX file at `path` (atomically)."""
    onnx = require("onnx", "export")
    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata, sort_keys=True)
    return atomic_write(path, lambda tmp: onnx.save_model(proto, tmp))

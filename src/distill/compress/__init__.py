"""Compression building blocks: pruning, int8 quantization, export (safetensors + JSON metadata, ONNX).

One concern per file; each works on a plain `nn.Module` or an ONNX file and knows nothing of run directories
(`distill.deploy` turns a run directory into an export). Optional packages (`onnx`, `onnxruntime`, `torch-pruning`)
are imported inside the functions that need them, so `import distill` never requires them.
"""

from __future__ import annotations

from .export import export_onnx, read_metadata, save_safetensors
from .prune import make_permanent, mask_unstructured, prunable_weights, prune_channels, prune_unstructured, sparsity
from .quantize import QUANTIZABLE_OPS, quantizable_ops, quantize_onnx
from .runtime import OnnxModule, onnx_session

__all__ = [
    "QUANTIZABLE_OPS",
    "OnnxModule",
    "export_onnx",
    "make_permanent",
    "mask_unstructured",
    "onnx_session",
    "prunable_weights",
    "prune_channels",
    "prune_unstructured",
    "quantizable_ops",
    "quantize_onnx",
    "read_metadata",
    "save_safetensors",
    "sparsity",
]

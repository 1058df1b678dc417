"""int8 post-training quantization of an ONNX model with ONNX Runtime's quantizer.

- Models whose only weight layers are MatMul/Gemm (MLPs): **dynamic** quantization — int8 weights, activation scales
  computed per call, no calibration data.
- Models with convolutions: **static** quantization in QDQ format (QuantizeLinear/DequantizeLinear pairs around each
  quantized op, which ONNX Runtime fuses into int8 kernels), weights per output channel, activation ranges from a
  calibration set (MinMax over the examples given).

Why not PyTorch-side int8: `torch.ao.quantization` is deprecated; torchao 0.18 on this CPU build of torch 2.13 does
not import cleanly (its bundled native libraries, built for another Python ABI, fail to load, and its import calls
a deprecated `torch.utils._pytree` API), and its dynamic int8 path in eager mode measured *slower* than fp32 at
batch 1 (1.21 vs 0.64 ms on a 390k-parameter CNN). ONNX Runtime's int8 kernels are the deployable path.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ..errors import DistillError
from ._optional import require

QUANTIZABLE_OPS = frozenset({"MatMul", "Gemm", "Conv"})  # the weight layers ONNX Runtime's int8 kernels cover


def quantizable_ops(onnx_path: str | Path) -> set[str]:
    """Op types in the model's graph that int8 quantization would change (a subset of `QUANTIZABLE_OPS`)."""
    onnx = require("onnx", "export")
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return {node.op_type for node in graph.node} & QUANTIZABLE_OPS


def quantize_onnx(src: str | Path, dst: str | Path, *, calibration: Iterable[np.ndarray] | None = None,
                  input_name: str = "inputs") -> dict[str, object]:
    """Write an int8 version of the ONNX model `src` to `dst`; return how (`{"mode", "per_channel",
    "calibration_examples"}`).

    Dynamic when the graph has no Conv; static QDQ otherwise, calibrated on `calibration` (arrays `(B, *input_shape)`
    float32, e.g. a few hundred training examples). Raises `DistillError` when the graph has nothing to quantize or a
    conv model comes without calibration data.
    """
    ops = quantizable_ops(src)
    if not ops:
        raise DistillError("the model has no Linear/MatMul or Conv layers, so int8 has nothing to quantize; "
                           "export it without --int8")
    q = require("onnxruntime.quantization", "export")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    static = "Conv" in ops
    batches = [np.ascontiguousarray(b, dtype=np.float32) for b in (calibration or [])]
    if static and not batches:
        raise DistillError("static int8 quantization of a conv model needs calibration examples; pass calibration=")

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self._it, None)
            return None if b is None else {input_name: b}

    with tempfile.TemporaryDirectory(prefix="distill-quant-") as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        quant_pre_process(str(src), pre)  # shape inference + graph fusions, as ONNX Runtime recommends
        if not static:
            q.quantize_dynamic(pre, str(dst), weight_type=q.QuantType.QInt8)
            return {"mode": "dynamic", "per_channel": False, "calibration_examples": 0}
        q.quantize_static(pre, str(dst), Reader(), quant_format=q.QuantFormat.QDQ, per_channel=True,
                          weight_type=q.QuantType.QInt8, activation_type=q.QuantType.QUInt8,
                          calibrate_method=q.CalibrationMethod.MinMax)
    return {"mode": "static-qdq", "per_channel": True, "calibration_examples": int(sum(len(b) for b in batches))}

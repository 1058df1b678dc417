"""An ONNX Runtime session behind the `nn.Module` surface, so the engine's `predict` and `speed` measure it
exactly as they measure a PyTorch model (same timing loop, same percentiles)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._optional import require


def onnx_session(path: str | Path, threads: int = 1) -> Any:
    """A CPU `onnxruntime.InferenceSession` for `path` using `threads` intra-op threads (and one inter-op thread)."""
    ort = require("onnxruntime", "export")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxModule(nn.Module):
    """`forward(x)` runs the session on `x` `(B, *input_shape)` float32 and returns its first output (the logits)
    `(B, C)` as a tensor. No parameters: pass `device=torch.device("cpu")` to `predict`."""

    def __init__(self, session: Any) -> None:
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)

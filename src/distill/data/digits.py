"""scikit-learn's 8x8 handwritten digits (1,797 real images, 10 classes), embedded in the package: the fast default."""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from ._registry import DataBundle, register_dataset


@register_dataset("digits")
def digits(*, seed: int = 0, test_fraction: float = 0.25, val_fraction: float = 0.1) -> DataBundle:
    """Stratified train/val/test split; pixels scaled from 0..16 to [0, 1]; inputs `(1, 8, 8)` float32."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32").reshape(-1, 1, 8, 8)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=seed)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_fraction, stratify=y_rest, random_state=seed
    )

    def ds(a, b) -> TensorDataset:
        return TensorDataset(torch.from_numpy(a), torch.from_numpy(b).long())

    return DataBundle(ds(x_train, y_train), ds(x_val, y_val), ds(x_test, y_test), 10, (1, 8, 8), [str(i) for i in range(10)])

"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017; MIT): 70,000 28×28 greyscale clothing images, 10 classes.

Read from the four standard gzipped IDX files in a directory; the default is where the Debian package
`dataset-fashion-mnist` installs them. The 60k training images are split into train/val (stratified, seeded);
`train_size` / `test_size` take seeded subsets, for short schedules. Inputs `(1, 28, 28)` float32, standardised with
the training-set mean and std (0.2860, 0.3530).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

from ..errors import DistillError
from ._registry import DataBundle, register_dataset

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MEAN, STD = 0.2860, 0.3530
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
           0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzipped if its name ends in .gz): magic `0 0 dtype ndim`, ndim big-endian uint32 sizes, data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DistillError(f"cannot read IDX file {str(path)!r} ({exc}); re-install or re-download it") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DistillError(f"{str(path)!r} is not an IDX file (bad magic number); check the data directory")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", raw[4:header]) if len(raw) >= header else ()
    dtype = np.dtype(_DTYPES[raw[2]])
    count = int(np.prod(dims)) if dims else 0
    if len(dims) != ndim or len(raw) - header != count * dtype.itemsize:
        raise DistillError(f"IDX file {str(path)!r} is truncated or corrupt (header says {dims}); re-install it")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)


def _subset(x: np.ndarray, y: np.ndarray, n: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if n is None or n >= len(y):
        return x, y
    classes = len(np.unique(y))
    stratified = np.bincount(y).min() >= 2 and min(n, len(y) - n) >= classes  # else (tiny files) a plain draw
    x, _, y, _ = train_test_split(x, y, train_size=n, stratify=y if stratified else None, random_state=seed)
    return x, y


@register_dataset("fashion-mnist")
def fashion_mnist(
    *,
    seed: int = 0,
    directory: str = DEFAULT_DIR,
    val_size: int = 5000,
    train_size: int | None = None,
    test_size: int | None = None,
) -> DataBundle:
    """Fashion-MNIST from `directory`; `train_size`/`test_size` keep stratified seeded subsets."""
    folder = Path(directory)
    missing = [name for name in FILES.values() if not (folder / name).is_file()]
    if missing:
        raise DistillError(
            f"Fashion-MNIST files {', '.join(missing)} not found in {str(folder)!r}; install them with "
            "'apt-get install -y dataset-fashion-mnist' or set data.kwargs.directory to a folder holding them"
        )
    arrays = {key: read_idx(folder / name) for key, name in FILES.items()}
    for split in ("train", "test"):
        if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
            raise DistillError(f"Fashion-MNIST {split} images and labels differ in count in {str(folder)!r}; re-install")

    def prep(images: np.ndarray) -> np.ndarray:  # (N, 28, 28) uint8 -> (N, 1, 28, 28) float32, standardised
        return ((images.astype(np.float32) / 255.0 - MEAN) / STD)[:, None]

    x, y = arrays["train_images"], arrays["train_labels"].astype(np.int64)
    n_val = min(val_size, len(y) // 5)
    if n_val >= 2 * len(np.unique(y)):
        x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=n_val, stratify=y, random_state=seed)
    else:  # tiny files (tests): the first rows validate
        n_val = max(1, n_val)
        x_train, x_val, y_train, y_val = x[n_val:], x[:n_val], y[n_val:], y[:n_val]
    x_train, y_train = _subset(x_train, y_train, train_size, seed)
    x_test, y_test = _subset(arrays["test_images"], arrays["test_labels"].astype(np.int64), test_size, seed)

    def ds(a: np.ndarray, b: np.ndarray) -> TensorDataset:
        return TensorDataset(torch.from_numpy(prep(a)), torch.from_numpy(b))

    shape = (1, *x.shape[1:])
    return DataBundle(ds(x_train, y_train), ds(x_val, y_val), ds(x_test, y_test), 10, shape, list(CLASS_NAMES))

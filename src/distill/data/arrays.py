"""Bring your own arrays: one `.npz` file with `x_train, y_train, x_val, y_val, x_test, y_test`.

    data: {name: npz, kwargs: {path: my_data.npz}}

Read with `numpy.load(allow_pickle=False)`: object arrays (which would unpickle) are refused, not loaded. Every problem
with the file -- missing, corrupt, truncated, an array missing, lengths or labels that do not fit -- is one
`DistillError` line naming the fix.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ..errors import DistillError
from ._registry import DataBundle, register_dataset

SPLITS = ("train", "val", "test")


def _read(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DistillError(f"data file {str(path)!r} not found; set data.kwargs.path to an existing .npz file")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise DistillError(f"data file {str(path)!r} is a single array, not an .npz archive; save it with "
                               "numpy.savez(x_train=..., y_train=..., x_val=..., ...)")
        with npz:
            return {k: npz[k] for k in npz.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())[:120]
        raise DistillError(
            f"data file {str(path)!r} is corrupt, truncated or holds pickled objects ({reason}); re-create it with "
            "numpy.savez from plain numeric arrays"
        ) from None


@register_dataset("npz")
def npz(*, path: str, seed: int = 0, num_classes: int | None = None) -> DataBundle:
    """Inputs `x_*` float32 of any per-example shape; labels `y_*` integer class ids in `[0, num_classes)`."""
    arrays = _read(Path(path))
    missing = [f"{k}_{s}" for s in SPLITS for k in ("x", "y") if f"{k}_{s}" not in arrays]
    if missing:
        raise DistillError(f"data file {path!r} lacks {', '.join(missing)}; save all six arrays x_/y_ train, val, test")
    splits = {}
    for s in SPLITS:
        x, y = arrays[f"x_{s}"], arrays[f"y_{s}"]
        if len(x) != len(y):
            raise DistillError(f"data file {path!r}: x_{s} has {len(x)} rows but y_{s} has {len(y)}; make them match")
        if not np.issubdtype(x.dtype, np.number) or not np.issubdtype(y.dtype, np.integer):
            raise DistillError(f"data file {path!r}: x_{s} must be numeric and y_{s} integer class ids; convert them")
        splits[s] = (x.astype("float32"), y.astype("int64"))
    classes = num_classes or int(max((int(y.max()) for _, y in splits.values() if len(y)), default=0)) + 1
    for s, (_, y) in splits.items():
        if len(y) and (y.min() < 0 or y.max() >= classes):
            raise DistillError(f"data file {path!r}: y_{s} has labels outside [0, {classes}); fix the labels or "
                               "data.kwargs.num_classes")
    ds = {s: TensorDataset(torch.from_numpy(x), torch.from_numpy(y)) for s, (x, y) in splits.items()}
    return DataBundle(ds["train"], ds["val"], ds["test"], classes, tuple(splits["train"][0].shape[1:]),
                      [str(i) for i in range(classes)])

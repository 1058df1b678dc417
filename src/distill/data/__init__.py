"""Datasets: built-in real datasets behind a registry, or a user factory `package.module:function`.

Every dataset is wrapped by `Indexed`, so each example is a dict `{"inputs": x, "labels": y, "index": i}` (a dataset
that already yields dicts keeps its keys and gains `index`). `index` lets a teacher cache look outputs up; a label of
-100 marks an unlabelled example (it gets only the soft loss).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DistillError
from ..imports import is_import_path, resolve
from . import arrays, digits, fashion_mnist, mnist, prompts, tweets  # noqa: F401  (fill the registry)
from ._registry import DATASETS, DataBundle, Indexed, register_dataset


def _label(item: Any) -> int | None:
    if isinstance(item, Mapping):
        y = item.get("labels")
    elif isinstance(item, (tuple, list)) and len(item) > 1:
        y = item[1]
    else:
        return None
    return None if y is None else int(torch.as_tensor(y).reshape(-1)[0])


def _inputs_shape(item: Any) -> tuple[int, ...]:
    x = item.get("inputs") if isinstance(item, Mapping) else (item[0] if isinstance(item, (tuple, list)) else item)
    return tuple(torch.as_tensor(x).shape) if x is not None else ()


def _label_max(ds: Dataset) -> int | None:
    """The largest label when the dataset holds its labels in one tensor (`TensorDataset`); None if that needs a pass."""
    tensors = getattr(ds, "tensors", None)
    if isinstance(tensors, tuple) and len(tensors) > 1 and tensors[1].numel():
        return int(tensors[1].max())
    return None


def load_data(
    name: str,
    *,
    kwargs: dict[str, Any] | None = None,
    num_classes: int | None = None,
    labelled_fraction: float = 1.0,
    seed: int = 0,
) -> DataBundle:
    """Load a built-in dataset by name, or call a user factory that returns `(train, val, test)` datasets.

    `labelled_fraction < 1` keeps labels on that fraction of the training set (chosen with `seed`) and marks the rest
    unlabelled: the transfer-set setting where the teacher's soft targets are the only signal for most examples.
    """
    kwargs = dict(kwargs or {})
    if is_import_path(name):
        factory = resolve(name)
        try:
            result = factory(**kwargs)
        except TypeError as exc:
            raise DistillError(f"data factory {name!r} rejected its kwargs ({exc}); fix data.kwargs") from None
        except OSError as exc:  # a missing or unreadable data file is the user's to fix, not a crash
            raise DistillError(
                f"data factory {name!r} could not read its data ({exc.strerror or exc}: {exc.filename}); "
                "check the paths in data.kwargs"
            ) from None
        if isinstance(result, Mapping):
            result = (result.get("train"), result.get("val"), result.get("test"))
        if not (isinstance(result, (tuple, list)) and len(result) == 3 and all(d is not None for d in result)):
            raise DistillError(f"data factory {name!r} must return (train, val, test) datasets")
        train, val, test = result
        names: list[str] = []
    else:
        builder = DATASETS.get(name)
        try:
            bundle = builder(seed=seed, **kwargs)
        except (TypeError, ValueError) as exc:  # unknown or out-of-range data.kwargs
            msg = " ".join(str(exc).split())[:200]
            raise DistillError(f"dataset {name!r} rejected data.kwargs ({msg}); fix data.kwargs") from None
        train, val, test, names = bundle.train, bundle.val, bundle.test, bundle.class_names
        num_classes = num_classes or bundle.num_classes
    for split, ds in (("train", train), ("val", val), ("test", test)):
        if len(ds) == 0:
            raise DistillError(f"the {split} split of dataset {name!r} is empty; give it at least one example")
    first = train[0]
    if num_classes is None:
        labels = [_label(train[i]) for i in range(len(train))]
        if any(y is None for y in labels):
            raise DistillError(f"cannot infer the class count of {name!r}; set data.num_classes in the recipe")
        num_classes = max(labels) + 1  # type: ignore[type-var]
    top = _label_max(train)
    if top is not None and top >= num_classes:  # else cross-entropy fails mid-run with "target out of bounds"
        raise DistillError(
            f"dataset {name!r} has label {top} but data.num_classes is {num_classes}; set data.num_classes to at "
            f"least {top + 1} or leave it out"
        )
    unlabelled: set[int] = set()
    if labelled_fraction < 1.0:
        rng = np.random.default_rng(seed)
        n_keep = max(1, int(round(labelled_fraction * len(train))))
        unlabelled = set(rng.permutation(len(train))[n_keep:].tolist())
    return DataBundle(
        train=Indexed(train, unlabelled),
        val=Indexed(val),
        test=Indexed(test),
        num_classes=int(num_classes),
        input_shape=_inputs_shape(first),
        class_names=list(names),
    )


__all__ = ["DATASETS", "DataBundle", "Indexed", "load_data", "register_dataset"]

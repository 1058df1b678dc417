"""The dataset registry and the types every dataset module shares (a leaf: dataset modules import it, the package
`__init__` imports them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from ..losses import IGNORE_INDEX
from ..registry import Registry

DATASETS: Registry = Registry("dataset")
register_dataset = DATASETS.register


class Indexed(Dataset):
    """Wraps a dataset so items are dicts with `inputs`, `labels`, `index`; labels of `unlabelled` rows become -100."""

    def __init__(self, base: Dataset, unlabelled: set[int] | None = None) -> None:
        self.base = base
        self.unlabelled = unlabelled or set()

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.base[i]
        if isinstance(item, Mapping):
            out = dict(item)
        elif isinstance(item, (tuple, list)):
            out = {"inputs": item[0]}
            if len(item) > 1:
                out["labels"] = torch.as_tensor(item[1])
        else:
            out = {"inputs": item}
        if i in self.unlabelled and "labels" in out:
            out["labels"] = torch.tensor(IGNORE_INDEX)
        out["index"] = torch.tensor(i)
        return out


@dataclass
class DataBundle:
    """Train/val/test splits plus what models need to know about them."""

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, ...]
    class_names: list[str] = field(default_factory=list)

    @property
    def teacher_train(self) -> Dataset:
        """The training set with every label: the teacher stands in for a model trained elsewhere on labelled data,
        so `labelled_fraction` limits only what the students see."""
        return Indexed(self.train.base) if isinstance(self.train, Indexed) else self.train

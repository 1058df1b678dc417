"""Tiny Hugging Face BERT models built from configs (nothing downloaded) and token batches, for the hf tests."""

from __future__ import annotations

import torch

VOCAB = 50
NUM_LABELS = 3


def tiny_bert(kind: str = "sequence", *, hidden: int = 32, layers: int = 2, seed: int = 0) -> torch.nn.Module:
    """A `BertFor{Sequence,Token}Classification` with `layers` layers of width `hidden`, no dropout (so a step is a
    deterministic function of the weights and the batch), eager attention (exact zeros for masked keys)."""
    from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

    config = BertConfig(
        vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=2 * hidden, max_position_embeddings=64, num_labels=NUM_LABELS,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    cls = BertForSequenceClassification if kind == "sequence" else BertForTokenClassification
    return cls(config)


def ragged_batch(kind: str, *, batch: int = 4, length: int = 7, seed: int = 0, labels: bool = True) -> dict:
    """Token ids `(B, T)` with rows of different real lengths (right-padded with id 0), their `attention_mask`, and
    labels: `(B,)` for sequence classification, `(B, T)` for token classification (-100 on padding and on the first
    token, as a collator leaves special tokens)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, length + 1, (batch,), generator=g)
    lengths[0] = length  # the longest row fills the batch, as a dynamic-padding collator makes it
    attention = (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).long()  # (B, T)
    ids = torch.randint(1, VOCAB, (batch, length), generator=g) * attention
    out = {"input_ids": ids, "attention_mask": attention}
    if labels and kind == "sequence":
        out["labels"] = torch.randint(0, NUM_LABELS, (batch,), generator=g)
    elif labels:
        tags = torch.randint(0, NUM_LABELS, (batch, length), generator=g)
        tags[attention == 0] = -100
        tags[:, 0] = -100
        out["labels"] = tags
    return out


def pad_to(batch: dict, length: int, *, label_fill: int = -100) -> dict:
    """The same batch right-padded to `length` tokens: id 0, attention 0, per-token labels `label_fill`."""
    extra = length - batch["input_ids"].shape[1]
    out = dict(batch)
    out["input_ids"] = torch.nn.functional.pad(batch["input_ids"], (0, extra), value=0)
    out["attention_mask"] = torch.nn.functional.pad(batch["attention_mask"], (0, extra), value=0)
    if "labels" in batch and batch["labels"].ndim == 2:
        out["labels"] = torch.nn.functional.pad(batch["labels"], (0, extra), value=label_fill)
    return out


class TokenDataset(torch.utils.data.Dataset):
    """`n` examples of different lengths (3..max_length tokens), unpadded: `{"input_ids", "attention_mask",
    "labels"}` (`labels` per token with -100 on the first, special-like token, or one class per sequence)."""

    def __init__(self, kind: str, n: int = 32, *, max_length: int = 9, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            length = int(torch.randint(3, max_length + 1, (), generator=g))
            ids = torch.randint(1, VOCAB, (length,), generator=g)
            # a learnable rule, so training has something to fit: the label follows the token id
            labels = (ids % NUM_LABELS) if kind == "token" else (ids[:2].sum() % NUM_LABELS)
            if kind == "token":
                labels = labels.clone()
                labels[0] = -100
            self.items.append({"input_ids": ids, "attention_mask": torch.ones(length, dtype=torch.long),
                               "labels": labels})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def collate(examples: list[dict]) -> dict:
    """Dynamic padding to the longest example: id 0, attention 0, token labels -100 (what HF collators do)."""
    length = max(e["input_ids"].shape[0] for e in examples)
    out = {}
    for key, fill in (("input_ids", 0), ("attention_mask", 0), ("labels", -100)):
        rows = [e[key] for e in examples]
        if rows[0].ndim == 0:
            out[key] = torch.stack(rows)
        else:
            out[key] = torch.stack([torch.nn.functional.pad(r, (0, length - r.shape[0]), value=fill) for r in rows])
    return out

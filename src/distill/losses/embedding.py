"""Sentence-embedding losses (Reimers & Gurevych 2020, "Making monolingual sentence embeddings multilingual using
knowledge distillation": the student's sentence embedding regresses the teacher's) and the per-token hidden-state
cosine of DistilBERT (Sanh et al. 2019). Pure functions; the teacher side is detached.

* `mean_pool(hidden, mask)`: the mean over real tokens of `(B, T, D)` hidden states -> `(B, D)` (sentence-transformers'
  pooling for all-MiniLM-L6-v2); padding never enters.
* `embedding_loss(s, t, kind=cosine|mse, mask)`: per example `1 - cos(s_b, t_b)` or `mean_d (s_bd - t_bd)²`, averaged
  over the examples `mask` `(B,)` keeps (all by default).
* `token_cosine_loss(s, t, mask)`: `1 - cos(s_bt, t_bt)` per token, averaged over the real tokens `mask` `(B, T)` keeps
  (not per example: a long sentence weighs as many tokens as it has, as in DistilBERT).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from .logits import mean_rows


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """`(B, T, D)`, mask `(B, T)` (True/1 = real token) -> `(B, D)` mean over real tokens (zeros for a row with none)."""
    if mask is None:
        return hidden.mean(dim=1)
    m = mask.to(hidden.device, hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor, *, kind: Literal["cosine", "mse"] = "cosine",
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """`(B, D)` student and teacher embeddings -> scalar; see the module docstring."""
    if student.shape != teacher.shape:
        raise ValueError(f"embedding_loss: student embedding {tuple(student.shape)} and teacher embedding "
                         f"{tuple(teacher.shape)} differ; project the student first")
    s, t = student.float(), teacher.detach().float()
    if kind == "cosine":
        per_row = 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)
    elif kind == "mse":
        per_row = ((s - t) ** 2).mean(dim=-1)
    else:
        raise ValueError(f"embedding_loss: kind must be 'cosine' or 'mse', got {kind!r}")
    return mean_rows(per_row, mask)


def token_cosine_loss(student: torch.Tensor, teacher: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """`(B, T, D)` hidden states -> scalar mean over real tokens of `1 - cos` (see the module docstring)."""
    if student.shape != teacher.shape:
        raise ValueError(f"token_cosine_loss: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} "
                         "differ; project the student first")
    per_token = 1.0 - F.cosine_similarity(student.float(), teacher.detach().float(), dim=-1, eps=1e-8)  # (B, T)
    return mean_rows(per_token, mask)

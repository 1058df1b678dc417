"""Contrastive representation distillation (Tian et al. 2020, "Contrastive Representation Distillation").

Student and teacher embeddings (last stage, pooled to `(B, D)`) go through trainable linear heads to a shared
`embed_dim`-dimensional unit sphere. Two memory banks keep one momentum-averaged embedding per training example:
exactly `num_examples` rows (the training set's size, addressed by the batch's `index`), allocated once. A row
holds a real embedding from the first time its example is seen (it then takes that embedding as it is); each
example is contrasted with its own row of the other side's bank (positive) and with `negatives` rows drawn
uniformly, with replacement, from the *filled* rows other than its own (the paper draws from all rows, random ones
included, early on), InfoNCE at temperature `nce_temperature`, both directions (`crd_loss`). After the step each
seen row becomes `normalize(momentum · row + (1 − momentum) · embedding)`.

Under several processes every process applies the updates of the whole global batch (the indices and embeddings are
gathered), and the negatives are drawn for the global batch from a generator all processes share, so the banks —
and the training — are those of one process at the global batch size. Heads and banks live on the method, never on
the student. Loss: `ce_weight·CE + kd_weight·KD + feature_weight·CRD` (paper: weight 0.8, dim 128, τ 0.07,
momentum 0.5); `distill.temperature` is read only by the optional KD term.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..batch import feature_mask, index_of
from ..errors import DistillError
from ..losses import as_vectors, crd_loss
from ._features import FeatureOptions, _device_of, build_bridge, check_features, combine
from .base import Method, register_method


class CRDOptions(FeatureOptions):
    feature_weight: float = Field(default=0.8, ge=0)
    embed_dim: int = Field(default=128, ge=1)
    negatives: int = Field(default=4096, ge=1)
    nce_temperature: float = Field(default=0.07, gt=0)
    momentum: float = Field(default=0.5, ge=0, lt=1)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All processes' `x` `(B_r, ...)` concatenated in rank order `(Σ B_r, ...)`, and this process's first row in it.
    Identity (offset 0) on one process. Batches may differ in size across processes."""
    if not _distributed():
        return x, 0
    size = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    padded = torch.zeros((max(counts), *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, counts)]), sum(counts[: dist.get_rank()])


@register_method("crd")
class CRD(Method):
    Options = CRDOptions
    runs_teacher_models = True
    uses = frozenset({"temperature"})
    method_name = "crd"
    accumulation_caveat = "its memory bank is updated after every micro-batch, and its negatives drawn per micro-batch"
    pair_mode = "relation"
    pair_select = "last"

    @classmethod
    def check(cls, student, teacher, example_batch, options, *, extra=()) -> None:  # noqa: ANN001
        check_features(cls, student, teacher, example_batch, options)
        if index_of(example_batch) is None:
            raise DistillError("crd keeps a memory bank per training example and needs batches with an 'index' key")

    def setup(self, example_batch: Any, *, num_examples: int | None = None) -> None:
        if not num_examples:
            raise DistillError("crd keeps one memory row per training example and needs a training set with a length")
        self.bridge = build_bridge(self, example_batch)
        pair, dim = self.bridge.pairs[0], self.options.embed_dim
        device = _device_of(example_batch)
        self.embed_s = nn.Linear(pair.student_shape[0] if len(pair.student_shape) != 2 else pair.student_shape[-1], dim)
        self.embed_t = nn.Linear(pair.teacher_shape[0] if len(pair.teacher_shape) != 2 else pair.teacher_shape[-1], dim)
        self.embed_s.to(device)
        self.embed_t.to(device)
        self.register_buffer("bank_s", torch.zeros(num_examples, dim, device=device))  # (N, D)
        self.register_buffer("bank_t", torch.zeros(num_examples, dim, device=device))
        self.register_buffer("filled", torch.zeros(num_examples, dtype=torch.uint8, device=device))  # 1 = real row
        # negatives come from a generator re-seeded each step from (seed, draws): the same on every process, and
        # restored exactly on resume (both are buffers, so checkpoints carry them)
        seed = torch.randint(0, 2**62, (), device=device)
        if _distributed():
            dist.broadcast(seed, src=0)
        self.register_buffer("seed", seed)
        self.register_buffer("draws", torch.zeros((), dtype=torch.long, device=device))

    def negatives(self, index: torch.Tensor) -> torch.Tensor:
        """`(G, K)` bank rows for the examples at `index` `(G,)`: uniform with replacement over the filled rows,
        never an example's own row. Draw number `draws` (the forward pass advances it once per training step)."""
        rows = self.filled.nonzero().squeeze(1)  # (n,) sorted row numbers that hold real embeddings
        own = self.filled[index].bool()  # (G,)
        n = rows.shape[0] - own.long()  # (G,): rows an example may draw from
        if bool((n < 1).any()):
            raise DistillError("crd has no other filled memory row to draw negatives from; use a batch size > 1")
        gen = torch.Generator().manual_seed((int(self.seed) + 0x9E3779B97F4A7C15 * int(self.draws)) % 2**63)
        u = torch.rand(index.shape[0], self.options.negatives, generator=gen).to(index.device)  # (G, K) in [0, 1)
        r = (u * n.unsqueeze(1)).long().clamp(max=rows.shape[0] - 1)  # (G, K): position among the allowed rows
        pos = torch.searchsorted(rows, index).unsqueeze(1)  # (G, 1): own row's position among the filled rows
        r = r + (own.unsqueeze(1) & (r >= pos)).long()  # skip over the example's own row
        return rows[r]

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        index = index_of(batch)
        if index is None:
            raise DistillError("crd needs batches with an 'index' key (dataset position of each example)")
        f = self.bridge.run(self.student, self.teacher, batch)
        mask = feature_mask(batch, f.teacher[0])  # (B, T) real tokens of hidden states; None otherwise
        s = F.normalize(self.embed_s(as_vectors(f.student[0], mask)), dim=1)  # (B, D), pooled over real tokens
        t = F.normalize(self.embed_t(as_vectors(f.teacher[0], mask)), dim=1)  # (B, D)
        index = index.long().to(s.device)  # (B,)
        size = self.bank_s.shape[0]
        if bool(((index < 0) | (index >= size)).any()):
            raise DistillError(
                f"crd: example index {int(index.max())} is outside the memory bank of {size} rows (one per training "
                "example); the batch 'index' must be the example's position in the training set"
            )
        if self.training:
            all_index, offset = gather_rows(index)  # (G,): the global batch, in rank order
            both, _ = gather_rows(torch.cat([s, t], dim=1).detach())  # (G, 2D)
            all_s, all_t = both.split(s.shape[1], dim=1)
            with torch.no_grad():  # first sight: the row takes the example's embedding as it is
                new = self.filled[all_index] == 0
                self.bank_s[all_index[new]] = all_s[new]
                self.bank_t[all_index[new]] = all_t[new]
                self.filled[all_index] = 1
            negatives = self.negatives(all_index)[offset: offset + index.shape[0]]  # (B, K)
            self.draws += 1
        else:
            negatives = self.negatives(index)
        rows = torch.cat([index.unsqueeze(1), negatives], dim=1)  # (B, 1+K), column 0 = positive
        feature = crd_loss(s, t, self.bank_s[rows], self.bank_t[rows], temperature=self.options.nce_temperature)
        if self.training:
            with torch.no_grad():  # momentum update of the global batch's rows, identical on every process
                m = self.options.momentum
                self.bank_s[all_index] = F.normalize(m * self.bank_s[all_index] + (1 - m) * all_s, dim=1)
                self.bank_t[all_index] = F.normalize(m * self.bank_t[all_index] + (1 - m) * all_t, dim=1)
        return combine(self, f, batch, feature)

"""Seeded, replayable data augmentation: every view is a pure function of (example index, view id, base seed).

Why: a teacher cache stores the teacher's outputs for K augmented *views* of each training example, and the student
must later see exactly the input the teacher scored (Beyer et al. 2022, "Knowledge distillation: A good teacher is
patient and consistent" — inconsistent views cost accuracy: on Fashion-MNIST, measured earlier on this project's
2-core CPU with a 26.7k-parameter CNN student, teacher logits from un-augmented images cost 1.5 points). So a view is
never drawn from a global RNG: its parameters are counter-based random numbers, a hash (splitmix64) of
(seed, index, view, slot), computed for a whole batch at once; `Augmented(dataset, cfg)[i]` at epoch e always returns
view `e % views` of example i, bit for bit, whatever batch or worker it lands in.

Operations on image tensors `(C, H, W)` (applied in this order):
- random crop with zero padding `crop_padding` pixels (shift of up to ±p pixels),
- horizontal flip with probability 0.5 (`flip`),
- `mix`: mixup (Zhang et al. 2018: `lam * x_i + (1 - lam) * x_j`, `lam ~ Beta(a, a)`) or cutmix (Yun et al. 2019:
  a box of area `1 - lam` pasted from x_j) with a partner j drawn from the same seeded stream, with probability
  `mix_prob`. The partner gets its own crop/flip from that stream too.

Labels of mixed views become -100 (unlabelled): the mixed input has no single label, and function matching trains the
student on the teacher's output alone (its hard term contributes nothing there). Phases without a teacher (the
student alone, the teacher's own training) use `cfg.without_mix()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from scipy.special import betaincinv
from torch.utils.data import Dataset

from .config import AugmentConfig

IGNORE_INDEX = -100


_GOLDEN, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrap-around arithmetic is intended)."""
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def uniforms(seed: int, index: np.ndarray, view: np.ndarray, slots: int = 8) -> np.ndarray:
    """Counter-based random numbers: `(B, slots)` float64 in [0, 1), a pure function of (seed, index, view, slot).
    Vectorised (no per-example generator objects), identical whatever the batch an example lands in."""
    idx = np.asarray(index, dtype=np.int64).astype(np.uint64)[:, None]
    v = np.broadcast_to(np.asarray(view, dtype=np.int64), idx.shape[:1]).astype(np.uint64)[:, None]
    slot = np.arange(slots, dtype=np.uint64)[None, :]
    h = _mix64(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) ^ _mix64(idx ^ _mix64(v * np.uint64(64) + slot)))
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _crop_flip(x: torch.Tensor, u: np.ndarray, cfg: AugmentConfig) -> torch.Tensor:
    """`(B, ..., H, W)`: shift each example by (dy, dx) in [-p, p] with zero fill (= a random crop of the zero-padded
    image), then flip along W where drawn. `u (B, >=3)` are the example's uniforms (slots 0, 1, 2)."""
    p = cfg.crop_padding
    if not (p or cfg.flip):
        return x
    if x.ndim < 3:
        raise ValueError("augment.crop_padding/flip need image inputs (C, H, W) or (H, W)")
    b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    dy = torch.from_numpy(np.floor(u[:, 0] * (2 * p + 1)).astype(np.int64) - p)  # (B,)
    dx = torch.from_numpy(np.floor(u[:, 1] * (2 * p + 1)).astype(np.int64) - p)
    flip = torch.from_numpy(u[:, 2] < 0.5) if cfg.flip else torch.zeros(b, dtype=torch.bool)
    ar_h, ar_w = torch.arange(h), torch.arange(w)
    rows = ar_h[None, :] + p + dy[:, None]  # (B, H) rows of the padded image
    cols = torch.where(flip[:, None], w - 1 - ar_w[None, :], ar_w[None, :]) + p + dx[:, None]  # (B, W)
    flat = x.reshape(b, -1, h, w)
    padded = torch.nn.functional.pad(flat, (p, p, p, p))  # (B, L, H + 2p, W + 2p)
    l, wp = padded.shape[1], padded.shape[-1]
    out = padded.gather(2, rows[:, None, :, None].expand(b, l, h, wp))  # (B, L, H, W + 2p)
    out = out.gather(3, cols[:, None, None, :].expand(b, l, h, w))  # (B, L, H, W)
    return out.reshape(x.shape)


def apply_views(
    x: torch.Tensor, index: np.ndarray, view: np.ndarray | int, cfg: AugmentConfig, seed: int, partner: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of a batch: inputs `x (B, ...)` of examples `index (B,)`, view ids `view`. `partner(js) -> (B, ...)`
    fetches un-augmented inputs of examples `js` for mixing. Returns `(augmented (B, ...), mixed (B,) bool)`.

    Uniform slots per (example, view): 0-2 crop/flip, 3 mix or not, 4 partner, 5 lam, 6-7 cutmix box centre.
    """
    u = uniforms(seed, index, view)
    x = _crop_flip(x, u, cfg)
    b = x.shape[0]
    mixed = torch.from_numpy(u[:, 3] < cfg.mix_prob) if cfg.mix != "none" and partner is not None else torch.zeros(b, dtype=torch.bool)
    if not bool(mixed.any()):
        return x, mixed
    js = np.minimum(np.floor(u[:, 4] * partner.size).astype(np.int64), partner.size - 1)
    other = _crop_flip(partner(js), uniforms(seed, js, view), cfg)  # the partner's own crop/flip
    lam_np = u[:, 5] if cfg.mix_alpha == 1.0 else betaincinv(cfg.mix_alpha, cfg.mix_alpha, u[:, 5])  # Beta(a, a)
    lam = torch.from_numpy(lam_np.astype(np.float32)).reshape(b, *([1] * (x.ndim - 1)))
    x, other = x.float(), other.float()
    if cfg.mix == "mixup":
        blend = lam * x + (1.0 - lam) * other
    else:  # cutmix: a box of area ~(1 - lam) * H * W centred at a uniform point, clipped to the image
        h, w = x.shape[-2], x.shape[-1]
        bh = torch.from_numpy(np.round(h * np.sqrt(1 - lam_np)).astype(np.int64))
        bw = torch.from_numpy(np.round(w * np.sqrt(1 - lam_np)).astype(np.int64))
        cy = torch.from_numpy(np.floor(u[:, 6] * h).astype(np.int64))
        cx = torch.from_numpy(np.floor(u[:, 7] * w).astype(np.int64))
        y0, x0 = (cy - bh // 2).clamp(min=0), (cx - bw // 2).clamp(min=0)
        y1, x1 = (cy - bh // 2 + bh).clamp(max=h), (cx - bw // 2 + bw).clamp(max=w)
        ys, xs = torch.arange(h)[None, :], torch.arange(w)[None, :]
        box = ((ys >= y0[:, None]) & (ys < y1[:, None]))[:, :, None] & ((xs >= x0[:, None]) & (xs < x1[:, None]))[:, None, :]
        box = box.reshape(b, *([1] * (x.ndim - 3)), h, w)  # (B, 1.., H, W)
        blend = torch.where(box, other, x)
    mask = mixed.reshape(b, *([1] * (x.ndim - 1)))
    return torch.where(mask, blend, x), mixed


class _Partner:
    """Fetches the (un-augmented) inputs `(B, ...)` of examples `js` from the wrapped dataset."""

    def __init__(self, base: Dataset) -> None:
        self.base = base
        self.size = len(base)  # type: ignore[arg-type]

    def __call__(self, js: np.ndarray) -> torch.Tensor:
        return torch.stack([torch.as_tensor(self.base[int(j)]["inputs"]) for j in js])


class Augmented(Dataset):
    """Wraps an indexed dataset (items `{"inputs", "labels", "index"}`) and returns view `view` of each item, plus the
    key `view` (the view id) so a teacher cache can look the matching output up.

    The view id is `epoch % cfg.views` (set by the training loop through `set_epoch`) unless `view` is fixed.
    """

    def __init__(self, base: Dataset, cfg: AugmentConfig, seed: int, *, view: int | None = None) -> None:
        self.base, self.cfg, self.seed = base, cfg, int(cfg.seed if cfg.seed is not None else seed)
        self.fixed_view = view
        self.epoch = 0
        self._partner = _Partner(base)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def view(self) -> int:
        return self.fixed_view if self.fixed_view is not None else self.epoch % self.cfg.views

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """Batched fetch (the DataLoader calls this with a whole batch): one vectorised augmentation per batch."""
        items = []
        for i in indices:
            item = self.base[i]
            if not isinstance(item, Mapping) or "inputs" not in item:
                raise TypeError("Augmented wraps datasets whose items are dicts with 'inputs' (wrap yours in data.Indexed)")
            items.append(dict(item))
        index = np.array([int(it.get("index", i)) for it, i in zip(items, indices)], dtype=np.int64)
        view = self.view
        if self.cfg.active:
            x = torch.stack([torch.as_tensor(it["inputs"]) for it in items])
            x, mixed = apply_views(x, index, view, self.cfg, self.seed, self._partner)
            for k, it in enumerate(items):
                it["inputs"] = x[k]
                if bool(mixed[k]) and "labels" in it:
                    it["labels"] = torch.tensor(IGNORE_INDEX)
        v = torch.tensor(view)
        for it in items:
            it["view"] = v
        return items


def augmented(ds: Dataset, cfg: AugmentConfig | None, seed: int, *, mix: bool = True) -> Dataset:
    """`Augmented(ds, ...)` when `cfg` does anything (or asks for several views), else `ds` unchanged."""
    if cfg is None or (not cfg.active and cfg.views == 1):
        return ds
    return Augmented(ds, cfg if mix else cfg.without_mix(), seed)

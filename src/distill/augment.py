"""Seeded, replayable data augmentation: every view is a pure function of (example index, view id, base seed).

Why: a teacher cache stores the teacher's outputs for K augmented *views* of each training example, and the student
must later see exactly the input the teacher scored (Beyer et al. 2022, "Knowledge distillation: A good teacher is
patient and consistent" — inconsistent views cost accuracy; measured here, 1.5 points on Fashion-MNIST). So a view is
never drawn from a global RNG: its parameters come from `numpy.random.default_rng([seed, index, view])`, and
`Augmented(dataset, cfg)[i]` at epoch e always returns view `e % views` of example i, bit for bit.

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

import json
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import Dataset

IGNORE_INDEX = -100


class AugmentConfig(BaseModel):
    """Recipe section `augment:`. All off by default (views=1, identity)."""

    model_config = ConfigDict(extra="forbid")
    views: int = Field(default=1, ge=1)  # K distinct views per example; epoch e uses view e % K
    crop_padding: int = Field(default=0, ge=0)
    flip: bool = False
    mix: Literal["none", "mixup", "cutmix"] = "none"
    mix_alpha: float = Field(default=1.0, gt=0)
    mix_prob: float = Field(default=1.0, ge=0, le=1)
    seed: int | None = None  # base seed; None = the recipe's seed

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip or self.mix != "none"

    def without_mix(self) -> AugmentConfig:
        return self.model_copy(update={"mix": "none"})

    def fingerprint(self, seed: int) -> str:
        """Canonical JSON of everything that changes a view (the cache manifest hashes it)."""
        doc = self.model_dump(mode="json")
        doc["seed"] = self.seed if self.seed is not None else seed
        return json.dumps(doc, sort_keys=True)


def _rng(seed: int, index: int, view: int) -> np.random.Generator:
    # SeedSequence mixes the three integers into independent streams; no global state is touched.
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index), int(view)])


def _crop_flip(x: torch.Tensor, rng: np.random.Generator, cfg: AugmentConfig) -> torch.Tensor:
    """`(C, H, W) -> (C, H, W)`: shift by up to ±p pixels with zero fill, then maybe flip along W (zero-filled
    shift == random crop of the padded image)."""
    dy, dx = rng.integers(-cfg.crop_padding, cfg.crop_padding + 1, size=2) if cfg.crop_padding else (0, 0)
    flip = bool(rng.integers(0, 2)) if cfg.flip else False
    if dy or dx:
        p = cfg.crop_padding
        h, w = x.shape[-2:]
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        x = padded[..., p + dy : p + dy + h, p + dx : p + dx + w]
    if flip:
        x = torch.flip(x, dims=(-1,))
    return x.contiguous()


def view_of(
    x: torch.Tensor, index: int, view: int, cfg: AugmentConfig, seed: int, partner: Any = None
) -> tuple[torch.Tensor, bool]:
    """View `view` of example `index` with inputs `x (C, H, W)`. `partner(j) -> (C, H, W)` fetches example j for
    mixing. Returns `(augmented (C, H, W), mixed)`."""
    rng = _rng(seed, index, view)
    x = _crop_flip(x, rng, cfg)
    if cfg.mix == "none" or partner is None:
        return x, False
    do_mix = rng.random() < cfg.mix_prob
    j = int(rng.integers(0, partner.size))
    lam = float(rng.beta(cfg.mix_alpha, cfg.mix_alpha))
    box = rng.random(2)
    if not do_mix:
        return x, False
    other = _crop_flip(partner(j), _rng(seed, j, view), cfg.without_mix())
    if cfg.mix == "mixup":
        return lam * x + (1.0 - lam) * other, True
    h, w = x.shape[-2:]  # cutmix: box of area (1 - lam) * H * W centred at a random point, clipped
    bh, bw = int(round(h * np.sqrt(1 - lam))), int(round(w * np.sqrt(1 - lam)))
    cy, cx = int(box[0] * h), int(box[1] * w)
    y0, y1 = max(cy - bh // 2, 0), min(cy + bh // 2 + bh % 2, h)
    x0, x1 = max(cx - bw // 2, 0), min(cx + bw // 2 + bw % 2, w)
    out = x.clone()
    out[..., y0:y1, x0:x1] = other[..., y0:y1, x0:x1]
    return out, True


class _Partner:
    """Fetches the (un-augmented) inputs of example j from the wrapped dataset."""

    def __init__(self, base: Dataset) -> None:
        self.base = base
        self.size = len(base)  # type: ignore[arg-type]

    def __call__(self, j: int) -> torch.Tensor:
        return torch.as_tensor(self.base[j]["inputs"])


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
        item = self.base[i]
        if not isinstance(item, Mapping) or "inputs" not in item:
            raise TypeError("Augmented wraps datasets whose items are dicts with 'inputs' (wrap yours in data.Indexed)")
        out = dict(item)
        index = int(out.get("index", i))
        view = self.view
        x = torch.as_tensor(out["inputs"])
        if self.cfg.active:
            x, mixed = view_of(x, index, view, self.cfg, self.seed, self._partner)
            if mixed and "labels" in out:
                out["labels"] = torch.tensor(IGNORE_INDEX)
        out["inputs"] = x
        out["view"] = torch.tensor(view)
        return out


def augmented(ds: Dataset, cfg: AugmentConfig | None, seed: int, *, mix: bool = True) -> Dataset:
    """`Augmented(ds, ...)` when `cfg` does anything (or asks for several views), else `ds` unchanged."""
    if cfg is None or (not cfg.active and cfg.views == 1):
        return ds
    return Augmented(ds, cfg if mix else cfg.without_mix(), seed)

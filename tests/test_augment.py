"""Seeded augmentation views: pure functions of (index, view, seed), whatever the batch they land in."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from distill.augment import AugmentConfig, Augmented, _crop_flip, augmented, uniforms
from distill.data import Indexed
from distill.errors import DistillError
from distill.recipe import validate


def _data(n: int = 40) -> Indexed:
    g = torch.Generator().manual_seed(0)
    return Indexed(TensorDataset(torch.rand(n, 1, 6, 6, generator=g), torch.arange(n) % 3))


@pytest.mark.parametrize("mix", ["none", "mixup", "cutmix"])
def test_view_is_independent_of_batching(mix: str) -> None:
    cfg = AugmentConfig(views=3, crop_padding=2, flip=True, mix=mix, mix_alpha=0.4, mix_prob=0.7)
    ds = Augmented(_data(), cfg, seed=5)
    ds.set_epoch(4)  # view 1
    batched = next(iter(DataLoader(ds, batch_size=40, shuffle=False)))
    shuffled = next(iter(DataLoader(ds, batch_size=40, shuffle=True, generator=torch.Generator().manual_seed(1))))
    singles = torch.stack([ds[i]["inputs"] for i in range(40)])
    assert torch.equal(batched["inputs"], singles)
    order = shuffled["index"].argsort()
    assert torch.equal(shuffled["inputs"][order], batched["inputs"])
    assert bool((batched["view"] == 1).all())
    fresh = Augmented(_data(), cfg, seed=5, view=1)  # a new object (another process) rebuilds the same view
    assert torch.equal(torch.stack([fresh[i]["inputs"] for i in range(40)]), singles)


def test_views_differ_by_view_and_seed_and_mixed_rows_are_unlabelled() -> None:
    cfg = AugmentConfig(views=2, crop_padding=1, flip=True, mix="mixup")
    a0 = torch.stack([Augmented(_data(), cfg, 0, view=0)[i]["inputs"] for i in range(40)])
    a1 = torch.stack([Augmented(_data(), cfg, 0, view=1)[i]["inputs"] for i in range(40)])
    b0 = torch.stack([Augmented(_data(), cfg, 1, view=0)[i]["inputs"] for i in range(40)])
    assert not torch.equal(a0, a1) and not torch.equal(a0, b0)
    labels = torch.stack([Augmented(_data(), cfg, 0, view=0)[i]["labels"] for i in range(40)])
    assert bool((labels == -100).all())  # mix_prob=1: every view is mixed, its hard label is dropped
    plain = augmented(_data(), cfg, 0, mix=False)
    assert bool((torch.stack([plain[i]["labels"] for i in range(40)]) >= 0).all())


def test_crop_flip_by_hand() -> None:
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    u = np.array([[0.0, 0.99, 0.2]])  # dy=-1 (content moves down), dx=+1 (moves left), flip
    out = _crop_flip(x, u, AugmentConfig(crop_padding=1, flip=True))[0, 0]
    assert out.tolist() == [[0, 0, 0, 0], [0, 3, 2, 1], [0, 7, 6, 5], [0, 11, 10, 9]]


def test_uniforms_are_uniform_and_deterministic() -> None:
    u = uniforms(3, np.arange(20000), 0)
    assert u.shape == (20000, 8) and 0 <= u.min() and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01
    assert np.array_equal(u[123:124], uniforms(3, np.array([123]), 0))


def test_identity_config_leaves_data_alone_and_recipe_section_is_strict() -> None:
    ds = _data()
    assert augmented(ds, AugmentConfig(), 0) is ds
    base = {"name": "x", "teacher": {"name": "mlp"}, "student": {"name": "mlp"}}
    assert validate({**base, "augment": {"views": 4, "mix": "cutmix"}}).augment.views == 4
    with pytest.raises(DistillError, match="augment"):
        validate({**base, "augment": {"mixx": "cutmix"}})

"""The Keras-like Python API on a user's own models and (x, y) loaders."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distill import Distiller


def test_distiller_fit_and_evaluate() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = (x[:, 0] + x[:, 1] > 0).long()
    train = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    test = DataLoader(TensorDataset(x, y), batch_size=128)
    teacher = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 2))
    opt = torch.optim.Adam(teacher.parameters(), 1e-2)
    for _ in range(100):
        opt.zero_grad()
        nn.functional.cross_entropy(teacher(x), y).backward()
        opt.step()
    student = nn.Linear(4, 2)
    d = Distiller(teacher, student, temperature=4.0, alpha=0.9, lr=1e-2, progress=False)
    before = d.evaluate(test)
    d.fit(train, epochs=20, val_loader=test)
    after = d.evaluate(test)
    assert {"accuracy", "agreement", "kl_to_teacher", "ece", "nll"} <= set(after)
    assert after["kl_to_teacher"] < before["kl_to_teacher"]
    assert after["accuracy"] > 0.9
    assert any("val_accuracy" in r for r in d.history)

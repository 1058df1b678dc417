"""Keras-like Python API for people who bring their own models:

    Distiller(teacher, student, temperature=4.0, alpha=0.9).fit(train_loader, epochs=5, val_loader=val_loader)

Any `nn.Module` whose forward returns logits (or an object with `.logits`) works; loaders may yield `(x, y)` tuples
or dicts of tensors. It runs the same training loop as the CLI.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from .config import TrainConfig
from .engine.evaluate import accuracy, classification_metrics, predict
from .engine.loop import fit
from .engine.metrics import MetricsLog
from .methods import METHODS, build_method
from .teachers import LiveTeacher


class Distiller:
    """Distil `teacher` into `student` with a registered method (default: Hinton KD)."""

    def __init__(
        self,
        teacher: nn.Module | Any,
        student: nn.Module,
        *,
        temperature: float = 4.0,
        alpha: float = 0.9,
        method: str = "kd",
        options: dict[str, Any] | None = None,
        lr: float = 1e-3,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        scheduler: str = "cosine",
        mixed_precision: str = "no",
        progress: bool = True,
        accelerator: Accelerator | None = None,
    ) -> None:
        self.train_cfg = TrainConfig(
            lr=lr, optimizer=optimizer, weight_decay=weight_decay, scheduler=scheduler, mixed_precision=mixed_precision
        )
        self.accelerator = accelerator or Accelerator(mixed_precision=mixed_precision)
        source = LiveTeacher(teacher) if isinstance(teacher, nn.Module) else teacher
        cls = METHODS.get(method)
        self.teacher = source
        self.method = build_method(
            method, student, source if cls.needs_teacher else None, temperature=temperature, alpha=alpha, options=options
        )
        self.progress = progress
        self.log = MetricsLog(None, self.accelerator)

    @property
    def student(self) -> nn.Module:
        return self.method.student

    def fit(self, train_loader: DataLoader, *, epochs: int = 1, val_loader: DataLoader | None = None) -> Distiller:
        """Train the student for `epochs` epochs; per-epoch validation metrics land in `self.history`."""
        device = self.accelerator.device
        if isinstance(self.teacher, LiveTeacher) and self.teacher.execution is None:  # not chosen yet: one call per step
            self.teacher.expected_calls = epochs * len(train_loader)
        evaluate = (lambda m: {"accuracy": accuracy(m.student, val_loader, device)}) if val_loader is not None else None
        self.summary = fit(
            self.method, train_loader, self.train_cfg, accelerator=self.accelerator, phase="distill",
            epochs=epochs, log=self.log, evaluate=evaluate, progress=self.progress,
        )
        return self

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.log.records

    def evaluate(self, loader: DataLoader) -> dict[str, float]:
        """Student metrics on `loader`: accuracy, nll, ece, and agreement / kl_to_teacher against the teacher."""
        device = self.accelerator.device
        self.student.to(device)
        logits, labels = predict(self.student, loader, device)
        teacher_model = getattr(self.teacher, "model", None)
        teacher_logits = predict(teacher_model, loader, device)[0] if isinstance(teacher_model, nn.Module) else None
        out = classification_metrics(logits, labels, teacher_logits)
        out.pop("reliability", None)
        return out



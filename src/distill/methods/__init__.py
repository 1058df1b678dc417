"""Distillation methods: one file each, one registry line each.

A method is an `nn.Module` that owns the student (and any projectors it trains) as submodules and holds the teacher
as a *source* (not a submodule). `forward(batch)` returns `{"loss": scalar, "<part>": detached scalar, ...}`;
the engine logs every key but `loss`. Method-specific recipe options live in `distill.options` and are validated by
the method's `Options` pydantic model.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from ..registry import Registry
from ..teachers import TeacherSource

METHODS: Registry = Registry("method")
register_method = METHODS.register


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Method(nn.Module):
    """Base: stores student, teacher source, temperature, alpha and validated options. At most one level deep."""

    needs_teacher: ClassVar[bool] = True
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(
        self,
        student: nn.Module,
        teacher: TeacherSource | None,
        *,
        temperature: float = 4.0,
        alpha: float = 0.9,
        options: dict[str, Any] | BaseModel | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher  # plain attribute: never registered, never DDP-wrapped, never optimised
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.options = options if isinstance(options, BaseModel) else self.Options(**(options or {}))

    def setup(self, example_batch: Any) -> None:
        """Called once with one example batch (on the training device) before the optimizer is built, so a method
        can create shape-dependent submodules (projectors, memory banks). Default: nothing."""

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


def build_method(
    name: str,
    student: nn.Module,
    teacher: TeacherSource | None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
    options: dict[str, Any] | None = None,
) -> Method:
    """Look a method up in the registry and build it."""
    cls = METHODS.get(name)
    return cls(student, teacher, temperature=temperature, alpha=alpha, options=options)


from . import kd, scratch  # noqa: E402,F401  (fill the registry)

__all__ = ["METHODS", "Method", "NoOptions", "build_method", "register_method"]

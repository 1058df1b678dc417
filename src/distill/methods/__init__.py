"""Distillation methods: one file each, one registry line each.

A method is an `nn.Module` that owns the student (and any projectors it trains) as submodules and holds the teacher
as a *source* (not a submodule). `forward(batch)` returns `{"loss": scalar, "<part>": detached scalar, ...}`;
the engine logs every key but `loss`. Method-specific recipe options live in `distill.options` and are validated by
the method's `Options` pydantic model. The base class and the registry live in `base.py`; importing this package
imports every method file, which fills the registry.
"""

from . import (  # noqa: F401
    attention,
    born_again,
    cosine,
    crd,
    dkd,
    embedding,
    ensemble,
    fitnet,
    kd,
    lm_cached,
    lm_kd,
    pkt,
    rkd,
    scratch,
)
from .base import (
    METHODS,
    Method,
    NoOptions,
    build_method,
    check_distill,
    register_method,
)

__all__ = ["METHODS", "Method", "NoOptions", "build_method", "check_distill", "register_method"]

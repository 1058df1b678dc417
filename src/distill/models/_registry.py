"""The model registry (a leaf: model modules import it to register, the package `__init__` imports them)."""

from __future__ import annotations

from ..registry import Registry

MODELS: Registry = Registry("model")
register_model = MODELS.register

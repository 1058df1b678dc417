"""Small reference architectures behind a registry: `create_model("mlp", input_shape=..., num_classes=...)`.

Every factory takes `input_shape` (per-example, e.g. `(1, 8, 8)`) and `num_classes` plus its own keyword arguments
and returns an `nn.Module` whose forward maps `(B, *input_shape)` to logits `(B, num_classes)`.
A recipe may instead name a user factory `package.module:function`, called with the recipe's kwargs only.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import DistillError
from ..imports import is_import_path, resolve
from . import causal_lm, cnn, hf, minilm, mlp, pretrained  # noqa: F401  (fill the registry)
from ._registry import MODELS, register_model


def create_model(name: str, *, input_shape: tuple[int, ...], num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a registered model, or call a user factory `package.module:function(**kwargs)`."""
    if is_import_path(name):
        factory = resolve(name)
        try:
            model = factory(**kwargs)
        except (TypeError, ValueError, RuntimeError) as exc:  # unknown kwarg, or a value the layers refuse
            raise DistillError(
                f"model factory {name!r} rejected its kwargs ({_short(exc)}); fix the recipe's kwargs"
            ) from None
    else:
        try:
            model = MODELS.get(name)(input_shape=tuple(input_shape), num_classes=num_classes, **kwargs)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise DistillError(f"model {name!r} rejected its kwargs ({_short(exc)}); fix the recipe's kwargs") from None
    if not isinstance(model, nn.Module):
        raise DistillError(f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:200]


def count_params(model: nn.Module) -> int:
    """Number of parameters (all of them, trainable or not)."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODELS", "count_params", "create_model", "register_model"]

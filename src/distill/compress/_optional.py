"""Import an optional package, or raise one line naming the extra that installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import DistillError


def require(module: str, extra: str) -> ModuleType:
    """`importlib.import_module(module)`, or `DistillError` telling the user to `pip install 'distill[<extra>]'`."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DistillError(
            f"{module.split('.')[0]} is not installed; install it with `pip install 'distill[{extra}]'`"
        ) from None

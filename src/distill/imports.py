"""Resolve `package.module:function` import paths named in a recipe (after validation; YAML never executes code)."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from .errors import DistillError

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_import_path(name: str) -> bool:
    """True for strings shaped like `package.module:function`."""
    return bool(_IMPORT_PATH.match(name))


def resolve(path: str) -> Callable[..., Any]:
    """Import `package.module:function` and return the callable, or raise a one-line `DistillError`."""
    if not is_import_path(path):
        raise DistillError(f"{path!r} is not an import path; write it as 'package.module:function'")
    module_name, attr = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DistillError(
            f"cannot import module {module_name!r} for {path!r} ({exc}); check the name and that it is on PYTHONPATH"
        ) from None
    obj = getattr(module, attr, None)
    if obj is None or not callable(obj):
        raise DistillError(f"module {module_name!r} has no callable {attr!r}; check the part after ':' in {path!r}")
    return obj

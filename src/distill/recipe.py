"""Loading a recipe for the orchestration layer: its structure (`config.parse_recipe`, a leaf) plus the checks that
need the methods (name registered, `distill.options` valid for it). Use these, not the `config` functions, wherever
a recipe comes from a user."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import Recipe, parse_recipe, read_recipe
from .methods import check_distill


def validate(doc: Any, *, source: str = "recipe") -> Recipe:
    """Validate a recipe document (structure, values, method and its options); one-line `DistillError` otherwise."""
    recipe = parse_recipe(doc, source=source)
    check_distill(recipe.distill)
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply `--set key.path=value` overrides, validate it (see `validate`)."""
    recipe = read_recipe(path, overrides)
    check_distill(recipe.distill)
    return recipe

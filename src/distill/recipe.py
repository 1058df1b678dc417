"""Loading a recipe for the orchestration layer: its structure (`config.parse_recipe`, a leaf) plus the checks that
need the methods (name registered, `distill.options` valid for it). Use these, not the `config` functions, wherever
a recipe comes from a user."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .config import Recipe, parse_recipe, read_recipe
from .methods import METHODS, check_distill
from .task_kinds import task_kind


def validate(doc: Any, *, source: str = "recipe") -> Recipe:
    """Validate a recipe document (structure, values, method and its options); one-line `DistillError` otherwise."""
    recipe = parse_recipe(doc, source=source)
    check_distill(recipe.distill)
    task_kind(recipe)  # the task kind is registered and its task_options valid
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply `--set key.path=value` overrides, validate it (see `validate`)."""
    recipe = read_recipe(path, overrides)
    check_distill(recipe.distill)
    task_kind(recipe)  # the task kind is registered and its task_options valid
    return recipe


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe as YAML, every default written out (saved next to the weights of every run), except the
    loss keys its method does not read, written as null, so that the file loads again as the same recipe."""
    doc = recipe.model_dump(mode="json")
    uses = METHODS.get(recipe.distill.method).uses
    for key in ("temperature", "alpha"):
        if key not in uses:
            doc["distill"][key] = None
    return yaml.safe_dump(doc, sort_keys=False)

"""`train.seeds`: the students of a run, once per seed, inside the one run directory.

What a seed varies: the student's initial weights (shared by the student alone and the distilled student of that
seed, so the comparison stays paired), the data order and dropout. What it does not: the data split, the augmented
views (a data property that an offline teacher cache is built against) and the teacher, which is trained once on the
recipe's `seed` (or loaded) — it is the model being compressed, and the question each seed answers is "given this
teacher, does distilling beat training the student alone?".

Phase names carry the seed: `scratch@1`, `distilled@1` (and `distilled.1@1`, ... for born-again generations); their
weights are `checkpoints/<phase>.safetensors`, and `student.safetensors` is the first seed's distilled student.
Without `train.seeds` nothing changes: one pair of phases, `scratch` and `distilled`, on the recipe's `seed`.
"""

from __future__ import annotations

from typing import Any

from accelerate.utils import set_seed
from torch import nn

from .config import Recipe
from .data import DataBundle
from .models import create_model
from .report.stats import aggregate, paired_gain


def student_seeds(recipe: Recipe) -> list[int | None]:
    """The seeds the students train with; `[None]` when the recipe has no `train.seeds` (today's single run)."""
    return list(recipe.train.seeds) if recipe.train.seeds else [None]


def tag(seed: int | None) -> str:
    """The suffix of a seed's phase and model names: `@3`, or nothing for a run without `train.seeds`."""
    return "" if seed is None else f"@{seed}"


def fresh_student(recipe: Recipe, data: DataBundle, seed: int) -> nn.Module:
    """The student's initial weights for `seed` (the same architecture and kwargs as the recipe's student)."""
    set_seed(seed)
    return create_model(recipe.student.name, input_shape=data.input_shape, num_classes=data.num_classes,
                        **recipe.student.kwargs)


def combine(models: dict[str, dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """Evaluated rows keyed `teacher`, `scratch@s`, `distilled@s` (and per-seed variants such as `student_int8@s`)
    -> `report.json` keys: `models` (rows without a seed as they are; every per-seed model as one mean row with `ci95`
    and `per_seed`, in first-seen order), `seeds`, and `gain` (the paired accuracy gain of the distilled student over
    the student alone, `report.stats.paired_gain`, in accuracy fractions)."""
    groups: dict[str, dict[int, dict[str, Any]]] = {}
    for name, row in models.items():
        base, _, seed = name.partition("@")
        if seed:
            groups.setdefault(base, {})[int(seed)] = row
    order = dict.fromkeys(name.partition("@")[0] for name in models)
    out = {base: aggregate(groups[base]) if base in groups else models[base] for base in order}
    gain = paired_gain([models[f"distilled{tag(s)}"]["accuracy"] for s in seeds],
                       [models[f"scratch{tag(s)}"]["accuracy"] for s in seeds])
    return {"models": out, "seeds": list(seeds), "gain": {"metric": "accuracy", **gain}}

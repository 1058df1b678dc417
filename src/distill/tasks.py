"""Recipe-level tasks besides a run (orchestration layer): the layer pairs a feature method would use, a recipe's
teacher cache, and the teacher diagnostics of `distill check`. Both build and check everything through `pipeline.prepare` before doing anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .diagnose import recipe_diagnostics
from .errors import DistillError
from .methods import METHODS
from .models.pretrained import is_pretrained
from .pairing import Pair, propose_pairs
from .pipeline import example_batch, prepare
from .task_kinds import task_kind


def pairing_for_recipe(recipe: Any) -> tuple[str, list[Pair]]:
    """`(mode, pairs)` for a validated recipe: its method's pairing mode (or `project` for logit methods)."""
    prepared = prepare(recipe)  # builds and checks everything; writes nothing
    cls = METHODS.get(recipe.distill.method)
    mode = getattr(cls, "pair_mode", "project")
    options = cls.Options(**recipe.distill.options)
    pairs = propose_pairs(
        prepared.student_init, prepared.teacher, example_batch(prepared.data.train, 2), mode=mode,
        select=getattr(cls, "pair_select", "all"), overrides=getattr(options, "pairs", None),
        method=recipe.distill.method,
    )
    return mode, pairs


def build_recipe_cache(
    recipe: Any, out: str | Path | None = None, *, storage: str | None = None, k: int | None = None,
    temperature: float | None = None, rebuild: bool = False, progress: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """`distill cache RECIPE`: load the recipe's data and teacher, then build the cache its task kind keeps
    (`TaskKind.build_cache`: a classifier's `dense`/`topk` views, a causal LM's `topk`/`sampled` logit cache).
    `storage`, `k`, `temperature`: None = the kind's defaults. Returns (path, manifest). The output defaults to
    `distill.cache`, else `caches/<recipe name>`."""
    kind = task_kind(recipe)
    settings = kind.cache_settings(recipe, storage=storage, k=k, temperature=temperature)  # before anything loads
    path = Path(out or recipe.distill.cache or Path("caches") / recipe.name)
    p = prepare(recipe, open_cache=False)  # every user error (data, models, weights) surfaces before anything is written
    manifest = kind.build_cache(p.teacher, p.data, recipe, path, settings, rebuild=rebuild, progress=progress)
    return path, manifest


def check_recipe(recipe: Any) -> dict[str, Any]:
    """`distill check RECIPE`: the teacher diagnostics (`diagnose.recipe_diagnostics`) for the recipe's settings on
    its training (transfer) set. Needs a teacher that is already trained: `teacher.weights` or a pretrained model."""
    if not task_kind(recipe).diagnosable:
        raise DistillError("distill check diagnoses a classifier's soft targets; this recipe has task: "
                           f"{recipe.task} (its outputs have none to diagnose)")
    prepared = prepare(recipe)  # every user error (data, models, weights) surfaces first
    if recipe.teacher.weights is None and not is_pretrained(prepared.teacher):
        raise DistillError(
            "distill check needs a trained teacher, and this recipe trains its own: set teacher.weights "
            f"(e.g. --set teacher.weights=runs/{recipe.name}/checkpoints/teacher.safetensors after a run)"
        )
    return recipe_diagnostics(prepared.teacher, recipe, prepared.data.train)

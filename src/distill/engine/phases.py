"""The distilled phases, read from the method's hooks: shared by the recipe pipeline and the Python API, so both
surfaces run every registered method the same way (no method names here, no second loop).

A method says, through class hooks, what it needs: `check` (validate before anything is written), `extra_teachers`
(more teachers, for ensembles), `needs_scratch_student` (born-again's first generation learns from the student trained
alone), `generations` (how many distilled phases, each taught by the previous one) and `teacher_source` (what it
learns from, given the models). `run_generations` builds and trains those phases with a caller's `train` function.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import DistillError
from ..methods import METHODS, Method, build_method
from ..teachers import freeze


def phase_names(generations: int) -> list[str]:
    """`distilled.1`, …, `distilled.{n-1}`, then `distilled` (the last generation is the run's student)."""
    return [f"distilled.{g + 1}" for g in range(generations - 1)] + ["distilled"]


def run_generations(
    method: str,
    *,
    student_init: nn.Module,
    models: dict[str, Any],
    temperature: float,
    alpha: float,
    options: dict[str, Any],
    train: Callable[[str, Method], dict[str, Any]],
    unwrap: Callable[[nn.Module], nn.Module] = lambda m: m,
    built: dict[str, Method] | None = None,
    last_student: nn.Module | None = None,
) -> tuple[nn.Module, dict[str, dict[str, Any]], dict[str, Method]]:
    """Train the method's generations; returns `(last student, {phase: summary}, {phase: method})`.

    `models`: `teacher` (a frozen model, or None when only a `source` is given), `extra` (further frozen teachers),
    `previous` (the student trained alone, or None), `source` (the recipe's teacher as served: live or cached).
    Each generation starts from a copy of `student_init`; the last one trains `last_student` itself when given (the
    Python API trains the user's own module, which must hold `student_init`'s weights). `built` (from an earlier call) is trained further instead
    of being rebuilt: a second `Distiller.fit` continues, keeping projectors and memory banks.
    """
    cls = METHODS.get(method)
    names = phase_names(cls.generations(options))
    built = dict(built or {})
    phases: dict[str, dict[str, Any]] = {}
    previous = models.get("previous")
    student = previous
    for g, name in enumerate(names):
        fresh = name not in built
        if fresh or g > 0:  # a later generation learns from its predecessor as it is now, also on a second call
            teacher_of_gen = {**models, "generation": g,
                              "previous": freeze(copy.deepcopy(previous)) if previous is not None else None}
            source = cls.teacher_source(teacher_of_gen, options, temperature)
        if not fresh and g > 0:
            built[name].teacher = source
        if fresh:
            student = last_student if last_student is not None and g == len(names) - 1 else copy.deepcopy(student_init)
            built[name] = build_method(method, student, source, temperature=temperature, alpha=alpha, options=options)
        phases[name] = train(name, built[name])
        execution = getattr(built[name].teacher, "execution", None)
        if execution:
            phases[name]["teacher_execution"] = execution
        student = previous = unwrap(built[name]).student
    return student, phases, built


def check_teachers(method: str, teachers: list[Any], options: dict[str, Any]) -> None:
    """What the method can learn from, given the teachers a caller holds (models or teacher sources); raises a
    one-line `DistillError` instead of falling back to something else."""
    cls = METHODS.get(method)
    if not cls.needs_teacher:
        return
    if len(teachers) > 1 and not cls.multi_teacher:
        raise DistillError(
            f"method {method!r} learns from one teacher but {len(teachers)} were given; pass one teacher, or use "
            "method='ensemble' to distil from all of them"
        )
    if cls.runs_teacher_models and not all(isinstance(t, nn.Module) for t in teachers):
        kinds = ", ".join(type(t).__name__ for t in teachers if not isinstance(t, nn.Module))
        raise DistillError(
            f"method {method!r} runs its teacher models itself and needs nn.Module teachers, not {kinds}; pass the "
            "teacher model(s), or use a logit method such as 'kd' with a cached teacher"
        )


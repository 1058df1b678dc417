"""Keras-like Python API for people who bring their own models:

    Distiller(teacher, student, temperature=4.0, alpha=0.9).fit(train_loader, epochs=5, val_loader=val_loader)
    Distiller([t1, t2, t3], student, method="ensemble").fit(train_loader)

Any `nn.Module` whose forward returns logits (or an object with `.logits`) works; loaders may yield `(x, y)` tuples
or dicts of tensors. It runs every registered method through the same hooks and the same training loop as the CLI
(`engine.phases.run_generations`); what it cannot do is a `DistillError`, never a silent fallback to plain KD.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from accelerate import Accelerator
from pydantic import ValidationError
from torch import nn
from torch.utils.data import DataLoader

from .batch import is_causal_lm, to_device
from .config import DistillConfig, TrainConfig, one_line
from .engine.evaluate import classification_metrics, lm_metrics, predict, student_validation
from .engine.loop import fit, peek
from .engine.metrics import MetricsLog
from .engine.phases import check_teachers, run_generations
from .errors import DistillError
from .methods import METHODS, Method, build_method, check_distill
from .teachers import EnsembleTeacher, LiveTeacher, freeze


class Distiller:
    """Distil `teacher` (a model, a teacher source such as a `CachedTeacher`, or a list of models for methods that
    learn from several) into `student` with a registered method (default: Hinton KD).

    `temperature` and `alpha` default to the recipe defaults; passing one that the method does not use is an error.
    After `fit`, `student` (the very object you passed, in the memory format you gave it) holds the trained weights.
    """

    def __init__(
        self,
        teacher: nn.Module | Any | Sequence[nn.Module],
        student: nn.Module,
        *,
        temperature: float | None = None,
        alpha: float | None = None,
        method: str = "kd",
        options: dict[str, Any] | None = None,
        lr: float = 1e-3,
        optimizer: str = "adam",
        weight_decay: float = 0.0,
        scheduler: str = "cosine",
        mixed_precision: str = "no",
        channels_last: bool = True,
        grad_accum: int = 1,
        progress: bool = True,
        accelerator: Accelerator | None = None,
    ) -> None:
        given = {k: v for k, v in (("temperature", temperature), ("alpha", alpha)) if v is not None}
        try:
            self.config = DistillConfig(method=method, options=dict(options or {}), **given)
            self.train_cfg = TrainConfig(lr=lr, optimizer=optimizer, weight_decay=weight_decay, scheduler=scheduler,
                                         mixed_precision=mixed_precision, channels_last=channels_last,
                                         grad_accum=grad_accum)
        except ValidationError as exc:
            raise DistillError(f"Distiller: {one_line(exc)}") from None
        check_distill(self.config)  # registered method, valid options, no argument the method would ignore
        if self.config.temperature == "auto":
            raise DistillError("temperature='auto' is derived by `distill run`/`distill check` from the teacher's "
                               "diagnostics; pass a number to Distiller (distill.diagnose.diagnose_teacher measures it)")
        self.teachers = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
        if not self.teachers:
            raise DistillError("Distiller needs a teacher; pass a model (or a list of models for method='ensemble')")
        check_teachers(method, self.teachers, self.config.options)
        cls = METHODS.get(method)
        if cls.extra_teachers(self.config.options):
            raise DistillError(
                f"method {method!r}: the Python API takes teacher models, not configs in options['teachers']; "
                "pass them as a list: Distiller([t1, t2, t3], student, method='ensemble')"
            )
        if not isinstance(student, nn.Module):
            raise DistillError(f"the student must be a torch.nn.Module, not {type(student).__name__}")
        for t in self.teachers:
            if isinstance(t, nn.Module):
                freeze(t)
        first = self.teachers[0]
        self.teacher = LiveTeacher(first) if isinstance(first, nn.Module) else first  # the source kd-style methods use
        self._student = student
        self.accelerator = accelerator or Accelerator(mixed_precision=mixed_precision)
        self.progress = progress
        self.log = MetricsLog(None, self.accelerator)
        self._built: dict[str, Method] = {}
        self._scratch: nn.Module | None = None
        self._init: nn.Module | None = None
        self._checked = False

    @property
    def student(self) -> nn.Module:
        return self._student

    @property
    def method(self) -> Method | None:
        """The last generation's method (student, projectors, teacher source) once `fit` has run, else None."""
        return self._built.get("distilled")

    def fit(self, train_loader: DataLoader, *, epochs: int = 1, val_loader: DataLoader | None = None) -> Distiller:
        """Train for `epochs` epochs (every generation, for born-again); per-epoch validation lands in `history`.

        A second call trains the same methods further as a new phase: projectors and memory banks carry over, the
        learning-rate schedule and schedules inside a loss (DKD's warm-up) start again, and each born-again
        generation learns from its predecessor as that now is."""
        cfg, acc = self.config, self.accelerator
        cls = METHODS.get(cfg.method)
        if not self._checked:  # the method validates the models on one batch before anything trains
            cls.check(self._student, self.teachers[0], peek(train_loader), cfg.options, extra=self.teachers[1:])
            self._checked = True
        evaluate = student_validation(val_loader, acc.device)
        if isinstance(self.teacher, LiveTeacher) and self.teacher.execution is None:  # not chosen yet: one call per step
            self.teacher.expected_calls = epochs * len(train_loader)

        def train(name: str, method: nn.Module) -> dict[str, Any]:
            return fit(method, train_loader, self.train_cfg, accelerator=acc, phase=name, epochs=epochs, log=self.log,
                       evaluate=evaluate, progress=self.progress)

        self.summary: dict[str, Any] = {}
        if cls.needs_scratch_student(cfg.options) and self._scratch is None:
            self._init = copy.deepcopy(self._student)
            scratch = build_method("scratch", copy.deepcopy(self._init), None)
            self.summary["scratch"] = train("scratch", scratch)
            self._scratch = acc.unwrap_model(scratch).student
        first = self.teachers[0]
        models = {"teacher": first if isinstance(first, nn.Module) else None, "extra": self.teachers[1:],
                  "previous": self._scratch, "source": self.teacher}
        if self._init is None:  # earlier generations start from the student's weights as first given
            self._init = copy.deepcopy(self._student)
        _, phases, self._built = run_generations(
            cfg.method, student_init=self._init, models=models, temperature=cfg.temperature, alpha=cfg.alpha,
            options=cfg.options, train=train, unwrap=acc.unwrap_model, built=self._built, last_student=self._student,
        )
        self.summary.update(phases)
        return self

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.log.records

    def evaluate(self, loader: DataLoader) -> dict[str, float]:
        """Student metrics on `loader`: accuracy, nll, ece, and agreement / kl_to_teacher against the teacher (with
        several teachers, the mean of their probabilities). For a causal-LM student: next-token metrics over real
        target tokens (`engine.evaluate.lm_metrics`: nll, perplexity, accuracy, agreement, kl_to_teacher,
        teacher_nll)."""
        device = self.accelerator.device
        self._student.to(device)
        if is_causal_lm(self._student):  # next-token metrics over real target tokens, streamed (engine.lm_metrics)
            models = [t for t in self.teachers if isinstance(t, nn.Module)]
            return lm_metrics(self._student, loader, device, models[0].to(device) if len(models) == 1 else None)
        logits, labels = predict(self._student, loader, device)
        out = classification_metrics(logits, labels, self._teacher_logits(loader, device))
        out.pop("reliability", None)
        return out

    def _teacher_logits(self, loader: DataLoader, device: torch.device) -> torch.Tensor | None:
        models = [t for t in self.teachers if isinstance(t, nn.Module)]
        if len(models) != len(self.teachers):  # a cache or other source: it may not serve this loader's examples
            return None
        if len(models) == 1:
            return predict(models[0], loader, device)[0]
        ensemble = EnsembleTeacher(models, temperature=1.0).to(device)
        return torch.cat([ensemble(to_device(batch, device)).cpu() for batch in loader])


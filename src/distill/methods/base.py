"""The method base class and the method registry (a leaf module the method files import).

A method is an `nn.Module` that owns the student (and any projectors it trains) as submodules and holds the teacher
as a *source* (not a submodule). `forward(batch)` returns `{"loss": scalar, "<part>": detached scalar, ...}`;
the engine logs every key but `loss`. Method-specific recipe options live in `distill.options` and are validated by
the method's `Options` pydantic model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from ..batch import IGNORE_INDEX, attention_mask_of, is_causal_lm, labels_of, loss_units, next_token_batch
from ..config import DistillConfig, one_line
from ..errors import DistillError
from ..registry import Registry
from ..teachers import LiveTeacher, TeacherSource

METHODS: Registry = Registry("method")
register_method = METHODS.register
LOSS_KEYS = frozenset({"temperature", "alpha"})  # `distill` keys that only some methods' losses read


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Method(nn.Module):
    """Base: stores student, teacher source, temperature, alpha and validated options. At most one level deep."""

    needs_teacher: ClassVar[bool] = True
    # True for methods that run teacher models themselves (feature taps, ensembles, born-again generations) and so
    # cannot learn from the offline cache or honour distill.teacher_precision; the pipeline refuses those settings.
    runs_teacher_models: ClassVar[bool] = False
    Options: ClassVar[type[BaseModel]] = NoOptions
    multi_teacher: ClassVar[bool] = False  # True: learns from several teachers at once (the recipe's + `extra`)
    # The `distill` recipe keys this method's loss reads. A key the user wrote that is not here is refused by
    # `check_distill` (it would be silently ignored); defaults nobody wrote are never an error.
    uses: ClassVar[frozenset[str]] = frozenset({"temperature", "alpha"})
    # The models it works on: "any" (tensor or keyword inputs, logits out: image classifiers, HF classifiers, LMs),
    # "hf-encoder" (Hugging Face encoders called with output_hidden_states, e.g. for hidden-state or embedding terms)
    # or "causal-lm" (causal-LM students only, e.g. learning from an LLM logit cache).
    models: ClassVar[str] = "any"
    # Gradient accumulation (`train.grad_accum`) weights each micro-batch by `units`; a method whose loss is not a mean
    # over those rows says why here (relations within a batch, a memory bank updated per micro-batch) ...
    accumulation_caveat: ClassVar[str | None] = None
    # ... or sets this when terms over hidden states average over tokens while `units` counts examples
    token_features: ClassVar[bool] = False
    # What it reads from its teacher source: "logits" (a live teacher, a classifier cache: `teacher(batch)`) or
    # "lm-cache" (an LLM logit cache's sparse next-token entries, `teacher.entries(batch)`: `lm_cached`). The task
    # kind opening `distill.cache` refuses a cache the method cannot read, and a missing one it needs.
    teacher_outputs: ClassVar[str] = "logits"

    def __init__(
        self,
        student: nn.Module,
        teacher: TeacherSource | None,
        *,
        temperature: float = 4.0,
        alpha: float = 0.9,
        options: dict[str, Any] | BaseModel | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher  # plain attribute: never registered, never DDP-wrapped, never optimised
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.options = options if isinstance(options, BaseModel) else self.Options(**(options or {}))
        self._causal: bool | None = None
        self.last_batch: Any = None  # the prepared batch of the latest forward (gradient accumulation counts its units)
        # Every call `method(batch)` or `method(batch=...)` (the loop's, DDP's, the HF Trainer's) first passes the
        # batch through `prepare_batch`, so no method's forward can forget the next-token shift of causal LMs.
        self.register_forward_pre_hook(_prepare_hook, with_kwargs=True)

    def prepare_batch(self, batch: Any) -> Any:
        """The batch `forward` sees. Default: for a causal-LM student (`batch.is_causal_lm`), labels become next-token
        targets (`batch.next_token_batch`: position t is scored against token t+1, prompt tokens (-100) and padding
        never count), so every method's hard and soft terms compare the right positions. Methods may extend it
        (e.g. replace a batch by the student's own completions) and then call `super().prepare_batch`."""
        if self._causal is None:
            self._causal = is_causal_lm(self.student)
        return next_token_batch(batch) if self._causal else batch

    def units(self, batch: Any) -> int:
        """How many rows this method's loss on the (prepared) `batch` is a mean over; the training loop weights each
        micro-batch of a gradient-accumulation window by its share of them (`train.grad_accum`). Default
        `batch.loss_units`: labelled positions for token batches, examples otherwise."""
        return loss_units(batch)

    def accumulation_note(self, batch: Any) -> str | None:
        """Why k accumulated micro-batches like the (prepared) `batch` would not give exactly the update of one batch
        k times the size; None when they do (every term averages over the `units` rows). The loop warns once per
        phase when `train.grad_accum` > 1 and this is not None."""
        if self.accumulation_caveat:
            return self.accumulation_caveat
        if self.token_features and attention_mask_of(batch) is not None:
            return "its hidden-state terms average over tokens while the micro-batches are weighted by examples"
        labels = labels_of(batch)
        if isinstance(labels, torch.Tensor) and labels.ndim == 1 and not bool((labels != IGNORE_INDEX).all()):
            return ("its hard term averages over the labelled examples only and its soft term over all, while the "
                    "micro-batches are weighted by examples")
        return None

    # Hooks the pipeline reads generically (no method names in the engine); the defaults describe plain KD.
    @classmethod
    def check(cls, student: nn.Module, teacher: nn.Module, example_batch: Any, options: dict[str, Any], *,
              extra: Sequence[nn.Module] = ()) -> None:
        """Validate the settings against the built models (`extra`: further teachers) on one example batch, before
        anything is written or trained (raise `DistillError`)."""

    @classmethod
    def generations(cls, options: dict[str, Any]) -> int:
        """How many times the distilled phase runs, each generation taught by the previous one (born-again)."""
        return 1

    @classmethod
    def needs_scratch_student(cls, options: dict[str, Any]) -> bool:
        """True when the first generation learns from the student trained alone (`models["previous"]`), so a
        caller without a student-alone phase (the Python API) must train one first."""
        return False

    @classmethod
    def extra_teachers(cls, options: dict[str, Any]) -> list[Any]:
        """`TeacherConfig`s of further teachers to build (and train, without weights) next to the recipe's teacher."""
        return []

    @classmethod
    def teacher_source(cls, models: dict[str, Any], options: dict[str, Any], temperature: float) -> TeacherSource | None:
        """The source this method learns from, given `models`: `teacher`, `extra` (list), `previous` (the student of
        the previous generation; the student trained alone for the first) and `source` (the recipe's teacher as the
        pipeline serves it: the offline cache when `distill.cache` is set, else live, in `distill.teacher_precision`)."""
        if not cls.needs_teacher:
            return None
        return models["source"] if models.get("source") is not None else LiveTeacher(models["teacher"])

    def setup(self, example_batch: Any, *, num_examples: int | None = None) -> None:
        """Called once with one example batch (on the training device) before the optimizer is built, so a method
        can create shape-dependent submodules (projectors, memory banks). `num_examples` is the training set's size
        (None for a dataset without a length). Default: nothing."""

    def on_step(self, done: int, total: int) -> None:
        """Called by the training loop before each training step: `done` optimizer updates so far in this phase
        (steps skipped for a non-finite loss or gradient do not count) out of `total` planned steps. For losses that
        follow the run's progress (DKD's warm-up). Default: nothing."""

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


def _prepare_hook(module: Method, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if args:
        args = (module.prepare_batch(args[0]), *args[1:])
        module.last_batch = args[0]
    elif "batch" in kwargs:
        kwargs = {**kwargs, "batch": module.prepare_batch(kwargs["batch"])}
        module.last_batch = kwargs["batch"]
    return args, kwargs


def build_method(
    name: str,
    student: nn.Module,
    teacher: TeacherSource | None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
    options: dict[str, Any] | None = None,
) -> Method:
    """Look a method up in the registry and build it."""
    cls = METHODS.get(name)
    return cls(student, teacher, temperature=temperature, alpha=alpha, options=options)


def check_distill(cfg: DistillConfig) -> None:
    """Check a recipe's `distill` section against its method: the name is registered, every loss key the user wrote
    (`temperature`, `alpha`) is one the method reads (`Method.uses`), and `distill.options` validate against the
    method's `Options`. Raises a one-line `DistillError`."""
    cls = METHODS.get(cfg.method)  # raises DistillError listing the registry
    for key in sorted(LOSS_KEYS & cfg.model_fields_set - cls.uses):
        reads = ", ".join(f"distill.{k}" for k in sorted(cls.uses)) or "neither"
        raise DistillError(
            f"distill.{key} is set to {getattr(cfg, key)} but method {cfg.method!r} does not use it (it reads {reads}); "
            f"leave it out (recipe: remove distill.{key} or --set distill.{key}=null; Python: don't pass {key}=)"
        )
    try:
        cls.Options(**cfg.options)
    except ValidationError as exc:
        raise DistillError(f"distill.options for method {cfg.method!r}: {one_line(exc)}") from None

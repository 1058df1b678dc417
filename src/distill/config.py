"""Recipes: YAML validated by pydantic (unknown keys rejected), with dotted overrides `--set distill.temperature=8`.

A recipe has the sections `name, seed, data, teacher, student, distill, train, eval` and optionally `compress`. Models and datasets are named by
registry name or by `package.module:function`; nothing in YAML executes code (only `yaml.safe_load`).
"""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import DistillError, nearest


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # lr: .inf or .nan would only fail mid-run


class AugmentConfig(BaseModel):
    """Recipe section `augment:`. All off by default (views=1, identity)."""

    model_config = ConfigDict(extra="forbid")
    views: int = Field(default=1, ge=1)  # K distinct views per example; epoch e uses view e % K
    crop_padding: int = Field(default=0, ge=0)
    flip: bool = False
    mix: Literal["none", "mixup", "cutmix"] = "none"
    mix_alpha: float = Field(default=1.0, gt=0)
    mix_prob: float = Field(default=1.0, ge=0, le=1)
    seed: int | None = None  # base seed; None = the recipe's seed

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip or self.mix != "none"

    def without_mix(self) -> AugmentConfig:
        return self.model_copy(update={"mix": "none"})

    def fingerprint(self, seed: int) -> str:
        """Canonical JSON of everything that changes a view (the cache manifest hashes it)."""
        doc = self.model_dump(mode="json")
        doc["seed"] = self.seed if self.seed is not None else seed
        return json.dumps(doc, sort_keys=True)


class DataConfig(Strict):
    name: str = "digits"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    num_classes: int | None = Field(default=None, ge=2)
    batch_size: int = Field(default=64, ge=1)
    eval_batch_size: int = Field(default=512, ge=1)
    labelled_fraction: float = Field(default=1.0, gt=0.0, le=1.0)
    num_workers: int = Field(default=0, ge=0)


class ModelConfig(Strict):
    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


class TeacherConfig(ModelConfig):
    weights: str | None = None  # safetensors (ours) or a third-party .pth/.bin read with weights_only=True
    epochs: int | None = Field(default=None, ge=1)  # training the teacher; default: train.epochs
    lr: float | None = Field(default=None, gt=0)


class DistillConfig(Strict):
    method: str = "kd"
    # a number > 0, or "auto": the T the teacher diagnostics derive from the teacher's own logits (diagnose.py).
    # Default 1: plain KD at T = 1 did not come out below the student alone on any case in BENCHMARKS.md ("Which
    # default does not lose"); the old T = 4 lost 13-16 points on a pretrained teacher and on Fashion-MNIST.
    temperature: float | Literal["auto"] = Field(default=1.0)
    alpha: float = Field(default=0.9, ge=0.0, le=1.0)
    options: dict[str, Any] = Field(default_factory=dict)
    cache: str | None = None  # teacher cache directory (`distill cache`); the distilled phase then runs no teacher
    teacher_precision: Literal["fp32", "bf16"] = "fp32"  # bf16: approximate, faster live teacher (fidelity logged)
    # a live teacher whose weights exceed this share of free memory gets at most one extra copy at a time while its
    # fastest exact execution is chosen (teachers/execution.py)
    teacher_copy_share: float = Field(default=0.25, gt=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _null_is_unset(cls, doc: Any) -> Any:
        """`temperature: null` / `--set distill.alpha=null` means "not written": a method that does not read the key
        then accepts the recipe (methods refuse loss keys the user wrote but they ignore, `Method.uses`)."""
        if isinstance(doc, dict):
            doc = {k: v for k, v in doc.items() if not (k in ("temperature", "alpha") and v is None)}
        return doc

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: float | str) -> float | str:
        if v != "auto" and not v > 0:
            raise ValueError("temperature must be > 0 or 'auto'")
        return v


class TrainConfig(Strict):
    epochs: int = Field(default=20, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    scheduler: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(default=0, ge=0)
    grad_clip: float | None = Field(default=None, gt=0)
    max_steps: int | None = Field(default=None, ge=1)  # cap per phase (optimizer steps), for smoke runs
    # micro-batches of `data.batch_size` per optimizer step: the update is the mean over all of them (each weighted
    # by its labelled tokens or examples), as one batch of grad_accum * batch_size would give, in less memory
    grad_accum: int = Field(default=1, ge=1)
    log_every: int = Field(default=10, ge=1)
    max_nonfinite: int = Field(default=10, ge=1)  # abort after this many consecutive skipped steps
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    checkpoint_every: int | None = Field(default=None, ge=1)
    channels_last: bool = True  # conv weights in NHWC memory format (CPU: 1.3-1.6x faster conv steps, bench/speed.py)
    # train the students (alone and distilled) once per seed; the report gives mean ± 95% CI and the paired gain.
    # None: one student pair on the recipe's `seed`, as before. The recipe's `seed` still fixes data and teacher.
    seeds: list[int] | None = None

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("list at least one seed, e.g. [0, 1, 2] (or remove train.seeds to use the recipe's seed)")
        if any(s < 0 or s >= 2**32 for s in v):
            raise ValueError("seeds must be in [0, 2**32)")
        repeated = sorted({s for s in v if v.count(s) > 1})
        if repeated:
            raise ValueError(f"seed {repeated[0]} is listed more than once; list each seed once")
        return v


class EvalConfig(Strict):
    latency_runs: int = Field(default=200, ge=1)
    latency_warmup: int = Field(default=20, ge=0)
    threads: int = Field(default=1, ge=1)
    explorer_examples: int = Field(default=4, ge=1, le=16)
    temperatures: list[float] = Field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0, 20.0])
    throughput_batch: int = Field(default=256, ge=1)  # examples per call for throughput_per_s (capped by the test set)

    @field_validator("temperatures")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if not v or any(t <= 0 for t in v):
            raise ValueError("temperatures must be a non-empty list of values > 0")
        return v


VARIANT = re.compile(r"^(teacher|student)_(onnx|int8|pruned_(\d+)|channels_(\d+))$")


class FinetuneConfig(Strict):
    """`compress.finetune:` the short fine-tune a pruned variant (`*_pruned_<pct>`, `*_channels_<pct>`) gets after
    pruning: cross-entropy on the labels through the training loop (`train`'s optimizer, scheduler and batch size),
    the pruned weights held at zero. `epochs: 0` skips it (the pruning's immediate cost)."""

    epochs: int = Field(default=1, ge=0)
    steps: int | None = Field(default=None, ge=1)  # cap on optimizer steps (whichever of epochs/steps ends first)
    lr: float | None = Field(default=None, gt=0)  # None: a tenth of the lr the pruned model was trained with


class CompressConfig(Strict):
    """Recipe section `compress:`: compressed variants evaluated beside teacher and students, in the same table.
    `<model>_<kind>` with model `teacher` or `student` (the distilled student; per seed under `train.seeds`) and kind
    `onnx` (ONNX Runtime fp32), `int8` (ONNX Runtime int8: dynamic for linear-only models, static QDQ calibrated on
    training examples for conv models), `pruned_<pct>` (global magnitude pruning, weights zeroed, dense kernels) or
    `channels_<pct>` (structured channel pruning with torch-pruning: smaller dense layers). See `distill.variants`."""

    variants: list[str] = Field(default_factory=list)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)

    @field_validator("variants")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        for name in v:
            found = VARIANT.match(name)
            if not found:
                raise ValueError(f"unknown variant {name!r}; use <teacher|student>_<onnx|int8|pruned_PCT|channels_PCT>, "
                                 "e.g. teacher_int8 or teacher_pruned_50")
            pct = found.group(3) or found.group(4)
            if pct is not None and not 0 < int(pct) < 100:
                raise ValueError(f"pruning amount in {name!r} must be a percentage in (0, 100), e.g. {found.group(1)}_"
                                 f"{found.group(2).split('_')[0]}_50")
        repeated = sorted({n for n in v if v.count(n) > 1})
        if repeated:
            raise ValueError(f"variant {repeated[0]!r} is listed more than once; list each variant once")
        return v


class Recipe(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = Field(default=0, ge=0, lt=2**32)  # numpy's seed range
    # what the models output: class logits (`classification`, the default), sentence embeddings (`embedding`:
    # evaluated by cosine to the teacher and a logistic-regression probe; the student "alone" is its initialisation)
    # or next-token logits of causal LMs (`causal_lm`). The kinds live in `distill.task_kinds` (checked there, one
    # layer up); `task_options` are the kind's settings (e.g. causal_lm's side-by-side generations).
    task: str = "classification"
    task_options: dict[str, Any] = Field(default_factory=dict)
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig
    student: ModelConfig
    distill: DistillConfig = Field(default_factory=DistillConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)  # seeded, replayable views (augment.py)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    compress: CompressConfig | None = None  # compressed variants in the report (None: none, as before)


def one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "recipe"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (remove it or check its spelling)"
        parts.append(f"{where}: {msg}")
    return " ".join("; ".join(parts).split())  # one line, even for keys with newlines in them


def apply_override(doc: dict[str, Any], assignment: str) -> None:
    """Apply `a.b.c=value` to a nested dict in place; the value is parsed as YAML (`8` -> int, `[1,2]` -> list)."""
    if "=" not in assignment:
        raise DistillError(f"--set {assignment!r} needs the form key.path=value, e.g. distill.temperature=8")
    path, raw = assignment.split("=", 1)
    keys = [k for k in path.strip().split(".") if k]
    if not keys:
        raise DistillError(f"--set {assignment!r} has an empty key; write e.g. distill.temperature=8")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node = doc
    for k in keys[:-1]:
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise DistillError(f"--set {assignment!r}: {k!r} is not a section; check the key path")
        node = child
    node[keys[-1]] = value


def parse_recipe(doc: Any, *, source: str = "recipe") -> Recipe:
    """Validate a recipe document's structure and values, turning every problem into one `DistillError` line.

    Method names and `distill.options` are checked one layer up (`distill.recipe.validate`), where the methods are
    known; this module stays a leaf."""
    if not isinstance(doc, dict):
        raise DistillError(f"{source} must be a YAML mapping with sections name, data, teacher, student, distill, train")
    try:
        return Recipe.model_validate(doc)
    except ValidationError as exc:
        raise DistillError(f"invalid {source}: {one_line(exc)}") from None


def builtin_recipes() -> dict[str, Path]:
    """The recipes shipped inside the package, by name (`digits`, `fashion-mnist`, ...). The package is installed
    as plain files (setuptools' default, editable or wheel), so each is a real path."""
    folder = resources.files("distill") / "recipes"
    return {f.name[:-5]: Path(str(f)) for f in folder.iterdir() if f.name.endswith(".yaml")}


def resolve_recipe_path(path: str | Path) -> Path:
    """A recipe file: `path` when it is a file, else the built-in recipe of that name (`digits` or `digits.yaml`)."""
    given = Path(path)
    if given.is_file():
        return given
    builtin = builtin_recipes()
    name = given.name[:-5] if given.name.endswith(".yaml") else given.name
    if str(given.parent) == "." and name in builtin:
        return builtin[name]
    raise DistillError(
        f"recipe {str(path)!r} not found: no such file and no such built-in recipe{nearest(name, builtin)}; pass the path of a "
        f"YAML recipe or one of: {', '.join(sorted(builtin))}"
    )


def read_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply `--set` overrides, validate its structure (`parse_recipe`)."""
    path = resolve_recipe_path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise DistillError(f"recipe {str(path)!r} is not valid YAML{where}; fix its syntax") from None
    if doc is None:
        doc = {}
    if isinstance(doc, dict):
        for assignment in overrides or []:
            apply_override(doc, assignment)
    return parse_recipe(doc, source=f"recipe {path.name}")

"""The task-kind registry and its default hooks (`TaskKind`: class logits), shared by the kinds in `task_kinds.py`
(classification, embedding) and `task_kind_lm.py` (causal LMs). See `task_kinds` for what each kind does."""
from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn
from torch.utils.data import DataLoader

from .batch import collate_fn_of
from .config import Recipe, one_line
from .data import DataBundle
from .diagnose import recipe_diagnostics
from .engine.evaluate import (
    classification_metrics,
    model_size,
    predict,
    speed,
    student_validation,
)
from .errors import DistillError, DistillWarning
from .methods import METHODS, build_method
from .registry import Registry
from .teachers import CachedTeacher
from .teachers.cache_build import build_cache, cache_keys

TASK_KINDS: Registry = Registry("task kind")
register_task_kind = TASK_KINDS.register


def data_loader(ds, batch_size: int, *, shuffle: bool, seed: int, workers: int = 0) -> DataLoader:
    """A DataLoader whose shuffle order is a function of `seed` alone (every phase of a seed sees the same order)."""
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=workers,
                      collate_fn=collate_fn_of(ds))


def example_batch(ds, n: int = 1) -> Any:
    """The first `n` examples of a dataset, collated as one batch."""
    return next(iter(DataLoader(ds, batch_size=n, collate_fn=collate_fn_of(ds))))


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


def task_kind(recipe: Recipe) -> TaskKind:
    """The recipe's task kind, its `task_options` validated (one-line `DistillError` otherwise)."""
    cls = TASK_KINDS.get(recipe.task)
    try:
        options = cls.Options(**(recipe.task_options or {}))
    except ValidationError as exc:
        raise DistillError(f"invalid task_options for task {recipe.task!r}: {one_line(exc)}") from None
    return cls(options)


class TaskKind:
    """Default hooks: class logits (`classification`)."""

    Options: type[BaseModel] = NoOptions
    diagnosable = True  # class soft targets that `distill check` (diagnose.recipe_diagnostics) can diagnose

    def __init__(self, options: BaseModel | None = None) -> None:
        self.options = options if options is not None else self.Options()

    # -- before anything is written -------------------------------------------------------------------------------
    def check_outputs(self, counts: dict[str, int], data: DataBundle, recipe: Recipe) -> None:
        """Check the models' output sizes (`counts`: role -> last output dimension on an example batch)."""
        extra = [role for role in counts if role not in ("teacher", "student")]
        if any(counts[role] != counts["teacher"] for role in extra):
            raise DistillError("the teachers in distill.options.teachers predict a different number of classes; fix their kwargs")
        if counts["teacher"] != counts["student"]:
            raise DistillError(
                f"teacher predicts {counts['teacher']} classes but student predicts {counts['student']}; "
                "give both models the same number of outputs"
            )
        if counts["student"] != data.num_classes:
            raise DistillError(
                f"models predict {counts['student']} classes but dataset {recipe.data.name!r} has {data.num_classes}; "
                "set num_classes in the model kwargs or data.num_classes"
            )

    # -- training --------------------------------------------------------------------------------------------------
    def diagnostics(self, teacher: nn.Module, recipe: Recipe, data: DataBundle, acc: Any) -> dict[str, Any]:
        """Teacher diagnostics on the transfer set (`diagnose.recipe_diagnostics`); the main process prints each
        warning as one `warning:` line. Every process computes them (the same T everywhere under `temperature: auto`)."""
        diagnostics = recipe_diagnostics(teacher, recipe, data.train, device=acc.device)
        if acc.is_main_process:
            for line in diagnostics["warnings"]:
                warnings.warn(line, DistillWarning, stacklevel=2)
        return diagnostics

    def validation(self, val_loader: DataLoader, device: torch.device) -> Callable[[nn.Module], dict[str, float]] | None:
        """Per-epoch validation of the training student, or None (scored once, at the end)."""
        return student_validation(val_loader, device)

    def train_alone(self, init: nn.Module, train_and_save: Callable[..., dict[str, Any]], save: Callable[..., None],
                    unwrap: Callable[[nn.Module], nn.Module], device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
        """The student alone (the baseline): `(model, phase summary)`. Default: cross-entropy on the labels."""
        scratch = build_method("scratch", copy.deepcopy(init), None)
        summary = train_and_save("scratch", scratch)
        return unwrap(scratch).student, summary

    # -- the offline teacher cache (`distill cache RECIPE`, `distill.cache`) ----------------------------------------
    def cache_settings(self, recipe: Recipe, *, storage: str | None = None, k: int | None = None,
                       temperature: float | None = None) -> dict[str, Any]:
        """`distill cache` options with this kind's defaults, checked before any data or model is loaded. Default:
        `dense` or `topk` (k classes, default 5) views of class log-probabilities; `temperature`: the T of the
        reported fidelity (default the recipe's)."""
        if recipe.teacher.weights is None:
            raise DistillError("distill cache needs a trained teacher: set teacher.weights (e.g. --set teacher.weights=PATH)")
        storage = storage or "dense"
        if storage not in ("dense", "topk"):
            raise DistillError(f"cache storage must be 'dense' or 'topk' for a {recipe.task} recipe (--storage), got {storage!r}")
        if temperature is not None and not temperature > 0:
            raise DistillError(f"--temperature {temperature} must be > 0")
        recipe_t = 1.0 if recipe.distill.temperature == "auto" else recipe.distill.temperature
        return {"storage": storage, "topk": 5 if k is None else k, "temperature": temperature or recipe_t}

    def build_cache(self, teacher: nn.Module, data: DataBundle, recipe: Recipe, path: Path, settings: dict[str, Any],
                    *, rebuild: bool = False, progress: bool = False) -> dict[str, Any]:
        """Build (or find up to date) the cache at `path`; returns its manifest with `up_to_date`."""
        return build_cache(
            teacher, data.train, path, augment=recipe.augment, seed=recipe.seed, storage=settings["storage"],
            topk=settings["topk"], batch_size=recipe.data.eval_batch_size, precision=recipe.distill.teacher_precision,
            temperature=settings["temperature"], rebuild=rebuild, workers=recipe.data.num_workers,
        )

    def cache_lines(self, path: Path, m: dict[str, Any], seconds: float) -> list[str]:
        """What `distill cache` prints about a built (or up-to-date) cache."""
        f = m["fidelity"]
        state = "up to date" if m["up_to_date"] else f"built in {seconds:.1f} s"
        return [f"cache {path}: {state}; {m['num_examples']} examples x {m['views']} views, {m['storage']}, "
                f"{m['bytes_per_example']:.0f} bytes/example",
                f"fidelity on {f['sample']} views: KL(live||cached) {f['kl_T1']:.2e} at T=1, {f['kl_T']:.2e} at "
                f"T={f['temperature']:g}; top-1 agreement {100 * f['top1_agreement']:.2f}%"]

    def open_cache(self, recipe: Recipe, data: DataBundle, teacher: nn.Module) -> Any:
        """The recipe's `distill.cache` as the distilled phase's teacher source (None without one), refused in one
        line unless built for this teacher, data and augmentation. Default: a classifier cache (`CachedTeacher`)."""
        reads = METHODS.get(recipe.distill.method).teacher_outputs
        if reads != "logits":
            raise DistillError(f"method {recipe.distill.method!r} learns from an LLM logit cache, which needs task: "
                               f"causal_lm (this recipe has task: {recipe.task})")
        if recipe.distill.cache is None:
            return None
        if recipe.teacher.weights is None:
            raise DistillError("distill.cache needs a trained teacher: set teacher.weights to the weights the cache was built with")
        keys = cache_keys(teacher, data.train, recipe.augment, recipe.seed, recipe.distill.teacher_precision)
        cache = CachedTeacher(recipe.distill.cache, expect=keys)
        if cache.num_classes != data.num_classes:
            raise DistillError(f"teacher cache has {cache.num_classes} classes but the data has {data.num_classes}; rebuild it")
        return cache

    # -- evaluation ------------------------------------------------------------------------------------------------
    def scores(self, models: dict[str, nn.Module], preds: dict[str, tuple[torch.Tensor, torch.Tensor]],
               data: DataBundle, recipe: Recipe, device: torch.device) -> dict[str, dict[str, float]]:
        """Extra per-model metrics; may replace `preds` entries by the logits to score (embedding: a probe's)."""
        return {name: {} for name in models}

    def evaluate(self, models: dict[str, nn.Module], data: DataBundle, recipe: Recipe, device: torch.device,
                 run_dir: Path | None = None) -> dict[str, Any]:
        """Test-set metrics, size and speed for every model; the first one is the reference teacher."""
        r = recipe
        test_loader = data_loader(data.test, r.data.eval_batch_size, shuffle=False, seed=r.seed)
        preds = {name: predict(m, test_loader, device) for name, m in models.items()}
        extra = self.scores(models, preds, data, r, device)
        teacher_logits, labels = next(iter(preds.values()))
        one = {k: v for k, v in example_batch(data.test, 1).items() if k not in ("labels", "index")}
        many = {k: v for k, v in example_batch(data.test, min(len(data.test), r.eval.throughput_batch)).items()
                if k not in ("labels", "index")}
        out: dict[str, Any] = {"models": {}, "dataset": dataset_info(data, r)}
        for name, model in models.items():
            logits, _ = preds[name]
            row = classification_metrics(logits, labels, teacher_logits)  # of the probe, for embeddings
            row.update(extra[name])
            row.update(model_size(model))
            cpu_model = model.to("cpu")
            row.update(speed(cpu_model, one, threads=r.eval.threads, warmup=r.eval.latency_warmup,
                             runs=r.eval.latency_runs, throughput_batch=many))
            row["throughput_1_per_s"] = 1000.0 / row["latency_ms_p50"]  # examples/s one at a time (batch 1)
            model.to(device)
            out["models"][name] = row
        out["task"] = r.task
        out["explorer"] = _explorer(teacher_logits, labels, data, r)
        out["speed_settings"] = {"device": "cpu", "threads": r.eval.threads, "latency_runs": r.eval.latency_runs,
                                 "warmup": r.eval.latency_warmup, "batch": 1, "throughput_batch": _first(many)}
        return out


def dataset_info(data: DataBundle, r: Recipe) -> dict[str, Any]:
    return {"name": r.data.name, "test_size": len(data.test), "train_size": len(data.train),
            "num_classes": data.num_classes, "input_shape": list(data.input_shape)}


def _first(x: dict[str, torch.Tensor]) -> int:
    return int(next(iter(x.values())).shape[0])


def _explorer(teacher_logits: torch.Tensor, labels: torch.Tensor, data: DataBundle, recipe: Recipe) -> dict[str, Any]:
    """A few test examples spread from the most to the least confident teacher prediction, with their logits."""
    n = min(recipe.eval.explorer_examples, len(labels))
    entropy = -(teacher_logits.softmax(-1) * teacher_logits.log_softmax(-1)).sum(-1)
    order = entropy.argsort()
    picks = [int(order[round(i * (len(order) - 1) / max(1, n - 1))]) for i in range(n)]
    examples = []
    for i in picks:
        x = data.test[i].get("inputs")
        image = None
        if isinstance(x, torch.Tensor) and x.ndim in (2, 3) and x.shape[-1] <= 64 and x.shape[-2] <= 64:
            image = (x[0] if x.ndim == 3 else x).tolist()
        examples.append({"index": i, "label": int(labels[i]), "teacher_logits": teacher_logits[i].tolist(), "image": image})
    return {"temperatures": recipe.eval.temperatures, "class_names": data.class_names, "examples": examples}


def fixed_temperature(recipe: Recipe) -> dict[str, Any]:
    """No soft targets to diagnose: the recipe's T (1 under `temperature: auto`), no warnings."""
    return {"temperature": 1.0 if recipe.distill.temperature == "auto" else recipe.distill.temperature, "warnings": []}

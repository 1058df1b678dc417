"""Task kinds: what a recipe's models output, and so how the pipeline checks, trains the student alone, validates
and evaluates them (orchestration layer). `pipeline.py` calls the hooks of `TASK_KINDS.get(recipe.task)` and holds no
`if task == ...` branches; a new kind is one subclass here with `@register_task_kind`.

- `classification` (default): class logits; teacher diagnostics (temperature, dark knowledge); the student alone is
  trained with cross-entropy (`scratch`); per-epoch validation accuracy; accuracy / NLL / ECE / agreement / KL,
  size, latency, the temperature explorer.
- `embedding`: sentence embeddings compared with the teacher's directly; the student alone is its initialisation;
  cosine to the teacher and a logistic-regression probe fitted on validation embeddings.
- `causal_lm`: next-token logits of causal LMs sharing a vocabulary; the student alone is trained on the same text
  with next-token cross-entropy (`scratch` through the next-token shift); held-out NLL / perplexity, next-token
  accuracy, top-1 agreement and KL(teacher ‖ model) per answer token, forward and generation tokens/s, and greedy
  side-by-side generations for a few held-out prompts, written to `generations.json` in the run directory.

Hooks (each gets what it needs; none reads another module's private state):
`Options` (pydantic model of `task_options`), `check_outputs`, `diagnostics`, `validation`, `train_alone`,
`evaluate`.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn
from torch.utils.data import DataLoader

from .batch import collate_fn_of
from .config import Recipe, one_line
from .data import DataBundle
from .diagnose import recipe_diagnostics
from .engine.evaluate import (
    classification_metrics,
    embedding_metrics,
    lm_metrics,
    model_size,
    predict,
    probe_log_probs,
    speed,
    student_validation,
)
from .engine.lm_eval import greedy_generations, lm_speed
from .errors import DistillError, DistillWarning
from .methods import build_method
from .registry import Registry

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
        out: dict[str, Any] = {"models": {}, "dataset": _dataset_info(data, r)}
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


def _dataset_info(data: DataBundle, r: Recipe) -> dict[str, Any]:
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


@register_task_kind("classification")
class Classification(TaskKind):
    """Class logits (the default); see `TaskKind`."""


def _fixed_temperature(recipe: Recipe) -> dict[str, Any]:
    """No soft targets to diagnose: the recipe's T (1 under `temperature: auto`), no warnings."""
    return {"temperature": 1.0 if recipe.distill.temperature == "auto" else recipe.distill.temperature, "warnings": []}


@register_task_kind("embedding")
class Embedding(TaskKind):
    """Sentence embeddings, compared with the teacher's directly."""

    diagnosable = False

    def check_outputs(self, counts: dict[str, int], data: DataBundle, recipe: Recipe) -> None:
        if counts["teacher"] != counts["student"]:
            raise DistillError(
                f"task: embedding compares embeddings, but the teacher's have {counts['teacher']} dimensions and the "
                f"student's {counts['student']}; give the student the teacher's hidden size"
            )

    def diagnostics(self, teacher: nn.Module, recipe: Recipe, data: DataBundle, acc: Any) -> dict[str, Any]:
        return _fixed_temperature(recipe)  # the teacher's outputs are embeddings: no soft targets to diagnose

    def validation(self, val_loader: DataLoader, device: torch.device) -> None:
        return None  # embeddings are scored once, at the end

    def train_alone(self, init, train_and_save, save, unwrap, device):  # noqa: ANN001, ANN201
        # embeddings from an unlabelled transfer set: without a teacher there is nothing to train on, so the student
        # alone is its initialisation (for a layer-subset student: the teacher's layers it copied)
        model = copy.deepcopy(init).to(device)
        save(model)
        return model, {"steps": 0, "note": "task: embedding; the student alone is not trained"}

    def scores(self, models, preds, data, recipe, device):  # noqa: ANN001, ANN201
        """Cosine to the teacher's embeddings; `preds` become a probe's log-probabilities (fitted on validation)."""
        val_loader = data_loader(data.val, recipe.data.eval_batch_size, shuffle=False, seed=recipe.seed)
        teacher_emb = next(iter(preds.values()))[0]
        extra = {}
        for name, m in models.items():
            emb, labels = preds[name]
            extra[name] = embedding_metrics(emb, teacher_emb)
            val_emb, val_labels = predict(m, val_loader, device)
            preds[name] = (probe_log_probs(val_emb, val_labels, emb), labels)
        return extra


class CausalLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    generation_examples: int = Field(4, ge=0, le=64)  # held-out prompts shown side by side in the report
    generation_max_new_tokens: int = Field(48, ge=1, le=1024)  # greedy, per side-by-side generation
    speed_new_tokens: int = Field(32, ge=1, le=1024)  # generated tokens per prompt when timing generation
    speed_batch: int = Field(4, ge=1, le=256)  # sequences per forward / generate call when timing
    speed_runs: int = Field(3, ge=1, le=100)  # timed calls (median) after one warm-up


@register_task_kind("causal_lm")
class CausalLM(TaskKind):
    """Causal LMs sharing a vocabulary: next-token KD on text (e.g. the teacher's own answers)."""

    Options = CausalLMOptions
    diagnosable = False

    def check_outputs(self, counts: dict[str, int], data: DataBundle, recipe: Recipe) -> None:
        if counts["teacher"] != counts["student"]:
            raise DistillError(
                f"task: causal_lm needs one vocabulary, but the teacher predicts {counts['teacher']} tokens and the "
                f"student {counts['student']}; cross-tokenizer distillation is not supported"
            )

    def diagnostics(self, teacher: nn.Module, recipe: Recipe, data: DataBundle, acc: Any) -> dict[str, Any]:
        return _fixed_temperature(recipe)  # per-token distributions: the class-count diagnostics do not apply

    def evaluate(self, models: dict[str, nn.Module], data: DataBundle, recipe: Recipe, device: torch.device,
                 run_dir: Path | None = None) -> dict[str, Any]:
        r, o = recipe, self.options
        test_loader = data_loader(data.test, r.data.eval_batch_size, shuffle=False, seed=r.seed)
        teacher = next(iter(models.values()))
        prompts = _prompts_of(data.test)
        out: dict[str, Any] = {"models": {}, "dataset": _dataset_info(data, r), "task": r.task, "explorer": {}}
        out["dataset"].update(num_classes=None, vocab_size=data.num_classes)  # sizes in prompts; targets: answer tokens
        for name, model in models.items():
            row: dict[str, Any] = lm_metrics(model, test_loader, device, teacher=teacher)
            row["ece"] = None  # per-token calibration is not measured for LMs
            row.update(model_size(model))
            row.update(lm_speed(model.to("cpu"), [p for p, _ in prompts[: o.speed_batch]], threads=r.eval.threads,
                                new_tokens=o.speed_new_tokens, runs=o.speed_runs, pad=_pad_id(teacher)))
            model.to(device)
            out["models"][name] = row
        out["dataset"]["test_tokens"] = int(out["models"][next(iter(models))]["tokens"])
        picks = prompts[: o.generation_examples]
        tokenizer = getattr(teacher, "distill_tokenizer", None)
        texts = {name: greedy_generations(m, [p for p, _ in picks], max_new_tokens=o.generation_max_new_tokens,
                                          tokenizer=tokenizer, pad=_pad_id(teacher))
                 for name, m in models.items()}
        texts_in = _prompt_texts(data.test)
        generations = [{"prompt": texts_in[i] if texts_in else _decode(tokenizer, p), "reference": _decode(tokenizer, a),
                        **{name: texts[name][i] for name in models}} for i, (p, a) in enumerate(picks)]
        out["generations"] = {"settings": {"decoding": "greedy", "max_new_tokens": o.generation_max_new_tokens},
                              "examples": generations}
        if run_dir is not None:
            (run_dir / "generations.json").write_text(json.dumps(out["generations"], indent=2), encoding="utf-8")
        out["speed_settings"] = {"device": "cpu", "threads": r.eval.threads, "batch": o.speed_batch,
                                 "new_tokens": o.speed_new_tokens, "runs": o.speed_runs, "warmup": 1,
                                 "latency_runs": o.speed_runs, "throughput_batch": o.speed_batch}
        return out


def _prompts_of(ds: Any) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) per example of a token dataset: the leading positions labelled -100 are the prompt."""
    out = []
    for i in range(len(ds)):
        item = ds[i]
        ids = [int(t) for t in item["input_ids"].tolist()]
        labels = item.get("labels")
        n = 0
        if labels is not None:
            labels = labels.tolist()
            while n < len(labels) and labels[n] == -100:
                n += 1
        out.append((ids[:n] or ids[:1], ids[n:]))
    return out


def _prompt_texts(ds: Any) -> list[str] | None:
    """The prompts as written (a dataset's `prompts`, looked up through wrappers), or None."""
    for _ in range(4):
        if isinstance(getattr(ds, "prompts", None), list):
            return ds.prompts
        ds = getattr(ds, "base", None)
    return None


def _pad_id(model: nn.Module) -> int:
    tok = getattr(model, "distill_tokenizer", None)
    for value in (getattr(tok, "pad_token_id", None), getattr(tok, "eos_token_id", None),
                  getattr(getattr(model, "config", None), "pad_token_id", None),
                  getattr(getattr(model, "config", None), "eos_token_id", None)):
        if isinstance(value, int):
            return value
    return 0


def _decode(tokenizer: Any, ids: list[int]) -> str:
    if tokenizer is None:
        return " ".join(map(str, ids))
    return tokenizer.decode(ids, skip_special_tokens=True)


__all__ = ["TASK_KINDS", "TaskKind", "data_loader", "example_batch", "register_task_kind", "task_kind"]

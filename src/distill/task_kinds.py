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
`evaluate`, and the offline teacher cache: `cache_settings` / `build_cache` / `cache_lines` (`distill cache RECIPE`:
a classifier's views, a causal LM's top-k or sampled logit cache) and `open_cache` (`distill.cache` as the
distilled phase's teacher source).
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
from .methods import METHODS, build_method
from .models.pretrained import is_pretrained
from .registry import Registry
from .teachers import CachedTeacher
from .teachers.cache_build import build_cache, cache_keys
from .teachers.lm_cache import LMCacheSource, sequences_of, teacher_identity
from .teachers.lm_cache_build import build_lm_cache_dir, check_lm_cache_settings, target_masks

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

    # -- the LLM logit cache ---------------------------------------------------------------------------------------
    def cache_settings(self, recipe: Recipe, *, storage: str | None = None, k: int | None = None,
                       temperature: float | None = None) -> dict[str, Any]:
        """`sampled` (default: k = 64 teacher draws per position at T = the recipe's temperature, the unbiased
        form) or `topk` (the k = 64 largest log-probabilities at T = 1 plus the leftover mass)."""
        form = storage or "sampled"
        k = 64 if k is None else k
        if temperature is None:
            recipe_t = 1.0 if recipe.distill.temperature == "auto" else float(recipe.distill.temperature)
            temperature = recipe_t if form == "sampled" else 1.0
        check_lm_cache_settings(form, k, temperature)
        return {"form": form, "k": k, "temperature": float(temperature)}

    def build_cache(self, teacher, data, recipe, path, settings, *, rebuild=False, progress=False):  # noqa: ANN001, ANN201
        """The logit cache over the training split's token sequences (`build_lm_cache_dir`), its fidelity measured
        on the validation split at the positions whose next token is a target (the answer tokens)."""
        _check_trained(teacher, recipe, "distill cache")
        train = sequences_of(data.train)
        held_out = sequences_of(data.val)
        notes = {"recipe": recipe.name, "data": recipe.data.name, "split": "train",
                 "held_out": f"validation split ({len(held_out)} sequences), positions predicting a target token"}
        return build_lm_cache_dir(
            teacher, train, path, tokenizer=getattr(teacher, "distill_tokenizer", None), form=settings["form"],
            k=settings["k"], temperature=settings["temperature"], seed=recipe.seed,
            batch_size=recipe.data.eval_batch_size, held_out=held_out, held_out_masks=target_masks(data.val, held_out),
            rebuild=rebuild, notes=notes, progress=progress)

    def cache_lines(self, path: Path, m: dict[str, Any], seconds: float) -> list[str]:
        state = "up to date" if m["up_to_date"] else f"built in {seconds:.1f} s"
        width = f"top-{m['k']}" if m["form"] == "topk" else f"sampled, K = {m['samples']} at T = {m['temperature']:g}"
        lines = [f"cache {path}: {state}; {m['num_sequences']} sequences, {m['num_tokens']} tokens, {width}; "
                 f"{m['bytes_per_token']:.1f} bytes/token ({m['bytes_per_token_with_tokens']:.1f} with the token ids), "
                 f"{m['file']['bytes'] / 2**20:.2f} MiB"]
        if m["form"] == "topk":
            lines.append(f"mean leftover mass (outside the top {m['k']}): {100 * m['mean_rest']:.2f}% of the probability")
        f = m.get("fidelity")
        if f:
            kl = (f"KL(live || top-k + uniform tail) {f['kl_uniform_tail']:.4f}, leftover {100 * f['rest']:.2f}%"
                  if m["form"] == "topk" else f"KL estimate bias {f['kl_gap']:+.4f} (live KL 0)")
            lines.append(f"fidelity on {f['positions']} held-out target positions ({f['sequences']} validation "
                         f"sequences): NLL gap cached - live {f['ce_gap']:+.4f} nats (live NLL {f['ce_live']:.3f}, "
                         f"mean |error| {f['ce_abs_error']:.3f}); {kl}")
        return lines

    def open_cache(self, recipe: Recipe, data: DataBundle, teacher: nn.Module) -> LMCacheSource | None:
        """The recipe's LLM logit cache (`distill.cache`) as an `LMCacheSource`, for methods that read one
        (`Method.teacher_outputs == "lm-cache"`: `lm_cached`); refused in one line when built with another teacher
        or tokenizer, over other data, or (sampled) at another temperature than the recipe's."""
        method = recipe.distill.method
        reads = METHODS.get(method).teacher_outputs
        if recipe.distill.cache is None:
            if reads == "lm-cache":
                raise DistillError(f"method {method!r} learns from an LLM logit cache: set distill.cache to a directory "
                                   "built by `distill cache RECIPE` (e.g. --set distill.cache=caches/NAME)")
            return None
        if reads != "lm-cache":
            raise DistillError(f"distill.cache on a causal_lm recipe is an LLM logit cache (sparse next-token "
                               f"entries), which method {method!r} cannot learn from; use distill.method: lm_cached, "
                               "or remove distill.cache to run the teacher live")
        _check_trained(teacher, recipe, "distill.cache")
        source = LMCacheSource(recipe.distill.cache,
                               expect=teacher_identity(teacher, getattr(teacher, "distill_tokenizer", None)))
        source.check_sequences(sequences_of(data.train))
        recipe_t = 1.0 if recipe.distill.temperature == "auto" else float(recipe.distill.temperature)
        if source.form == "sampled" and source.temperature != recipe_t:
            raise DistillError(f"logit cache {recipe.distill.cache!r} was sampled at T = {source.temperature:g} but the "
                               f"recipe trains at distill.temperature {recipe_t:g}; rebuild it with --temperature "
                               f"{recipe_t:g} or set distill.temperature={source.temperature:g}")
        return source

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


def _check_trained(teacher: nn.Module, recipe: Recipe, what: str) -> None:
    """A logit cache is of the teacher as loaded: one the run would train first (no weights, not pretrained) is not it."""
    if recipe.teacher.weights is None and not is_pretrained(teacher):
        raise DistillError(f"{what} needs a trained teacher, and this recipe trains its own: use a pretrained causal LM "
                           "(hf-causal-lm, smollm2-135m) or set teacher.weights")


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

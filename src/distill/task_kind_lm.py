"""The `causal_lm` task kind: next-token logits of causal LMs sharing a vocabulary (see `task_kinds`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .config import Recipe
from .data import DataBundle
from .engine.evaluate import (
    lm_metrics,
    model_size,
)
from .engine.lm_eval import greedy_generations, lm_speed
from .errors import DistillError
from .methods import METHODS
from .models.pretrained import is_pretrained
from .teachers.lm_cache import teacher_identity
from .teachers.lm_cache_source import LMCacheSource, sequences_of
from .teachers.lm_cache_build import build_lm_cache_dir, check_lm_cache_settings, target_masks

from .task_kind_base import TaskKind, dataset_info, fixed_temperature, data_loader, register_task_kind


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
        return fixed_temperature(recipe)  # per-token distributions: the class-count diagnostics do not apply

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
        out: dict[str, Any] = {"models": {}, "dataset": dataset_info(data, r), "task": r.task, "explorer": {}}
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

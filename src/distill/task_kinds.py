"""Task kinds: what a recipe's models output, and so how the pipeline checks, trains the student alone, validates
and evaluates them (orchestration layer). `pipeline.py` calls the hooks of `TASK_KINDS.get(recipe.task)` and holds no
`if task == ...` branches; a new kind is one subclass with `@register_task_kind` (here, or in its own module imported
here, as `task_kind_lm.py`; the registry and the default hooks are in `task_kind_base.py`).

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
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .config import Recipe
from .data import DataBundle
from .engine.evaluate import (
    embedding_metrics,
    predict,
    probe_log_probs,
)
from .errors import DistillError
from .task_kind_base import (
    TASK_KINDS,
    TaskKind,
    fixed_temperature,
    data_loader,
    example_batch,
    register_task_kind,
    task_kind,
)
from .task_kind_lm import CausalLM


@register_task_kind("classification")
class Classification(TaskKind):
    """Class logits (the default); see `TaskKind`."""


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
        return fixed_temperature(recipe)  # the teacher's outputs are embeddings: no soft targets to diagnose

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


__all__ = ["TASK_KINDS", "CausalLM", "TaskKind", "data_loader", "example_batch", "register_task_kind", "task_kind"]

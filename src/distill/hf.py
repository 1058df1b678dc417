"""Hugging Face glue: `DistillationTrainer`, a `transformers.Trainer` that distils, for people who keep their HF scripts.

    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=TrainingArguments(...),
                                  train_dataset=..., temperature=2.0, alpha=0.5, method="kd")
    trainer.train()

Its loss is one of our registered methods (`distill.methods.build_method`, with the teacher as a `LiveTeacher`), so
the Trainer, the recipes and the `Distiller` share one implementation of every loss, masks included: only real tokens
count (`batch.token_mask`). The teacher is frozen (`eval()`, no gradients, `inference_mode`), moved to the student's
device, and is not a submodule of the student: the optimizer never sees it and checkpoints never hold it.

Gradient accumulation: transformers passes `num_items_in_batch`, the count of labels != -100 over all the micro-batches
of one optimizer step. Each micro-batch's loss (a mean over its own real rows) is weighted by its share of that count,
so the accumulated loss is the mean over the whole accumulated batch, as without accumulation. This is exact when the
rows a method averages over are the labelled ones (labelled classification batches; token batches whose padding and
special tokens carry -100, as transformers' collators leave them); a batch without labels falls back to the Trainer's
mean of micro-batch means. `eval_loss` is the distillation loss on the evaluation set; `compute_metrics` receives the
student's logits as with a plain Trainer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from .batch import IGNORE_INDEX, labels_of
from .config import one_line
from .errors import DistillError
from .methods import METHODS, Method, build_method
from .models.layer_subset import layer_subset_student  # noqa: F401  (part of the HF surface)
from .teachers import LiveTeacher, freeze

try:
    from transformers import Trainer
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("distill.hf needs transformers: pip install 'distill[hf]'") from exc


class DistillationTrainer(Trainer):
    """A `transformers.Trainer` whose `compute_loss` is the registered distillation method `method`.

    `teacher_model`: the frozen teacher (any module whose outputs carry logits shaped like the student's).
    `temperature`, `alpha`: the method's (Hinton et al. 2015: `alpha·T²·KL(teacher_T ‖ student_T) + (1−alpha)·CE`
    for `kd`). `method_options`: the method's `distill.options`. Every other argument is `transformers.Trainer`'s.
    Methods that train modules of their own besides the student (projectors of different widths, CRD's embedding
    heads) or need several teachers are refused with one line: this Trainer optimises and saves the student only.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        teacher_model: nn.Module | None = None,
        args: Any = None,
        *,
        temperature: float = 2.0,
        alpha: float = 0.5,
        method: str = "kd",
        method_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if teacher_model is None:
            raise DistillError("DistillationTrainer needs teacher_model=<the trained teacher>")
        cls = METHODS.get(method)  # an unknown name: one line listing the registered methods
        options = dict(method_options or {})
        try:
            cls.Options(**options)
        except ValidationError as exc:
            raise DistillError(f"method_options for method {method!r}: {one_line(exc)}") from None
        if not cls.needs_teacher or cls.multi_teacher or cls.extra_teachers(options) or cls.generations(options) > 1 \
                or cls.needs_scratch_student(options):
            raise DistillError(
                f"method {method!r} does not learn from one live teacher, so DistillationTrainer cannot run it; "
                "use distill.Distiller or a recipe for it"
            )
        super().__init__(model=model, args=args, **kwargs)
        # The Trainer counts `num_items_in_batch` (labels != -100 over the accumulated micro-batches) only for models
        # that accept loss kwargs; our compute_loss normalises by it (see the module docstring), so ask for it, which
        # also tells training_step that the loss is already scaled for gradient accumulation when the count exists.
        self.model_accepts_loss_kwargs = True
        self.teacher_model = freeze(teacher_model).to(self.args.device)
        self.method: Method = build_method(
            method, self.model, LiveTeacher(self.teacher_model, tune=False),
            temperature=temperature, alpha=alpha, options=options,
        )
        self._ready = False

    def _method_for(self, model: nn.Module, inputs: dict[str, Any]) -> Method:
        """The method, running `model` (the Trainer may have wrapped the student) with the teacher on its device."""
        method = self.method
        if method.student is not model:
            method.student = model
        device = next(model.parameters()).device
        method.teacher.to(device)
        if not self._ready:
            dataset = self.train_dataset
            method.setup(inputs, num_examples=len(dataset) if hasattr(dataset, "__len__") else None)
            own = sorted({n.split(".")[0] for n, _ in method.named_parameters() if not n.startswith("student.")})
            if own:
                raise DistillError(
                    f"method {type(method).__name__.lower()!r} trains modules of its own ({', '.join(own)}) besides "
                    "the student, which DistillationTrainer would neither optimise nor save; use method='kd' or "
                    "'dkd', or distill.Distiller"
                )
            self._ready = True
        return method

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The method's loss on `inputs` (a mean over the batch's real rows), weighted by this micro-batch's share of
        `num_items_in_batch` when the Trainer gives it; with `return_outputs`, also the student's own output."""
        method = self._method_for(model, inputs)
        method.train(model.training)
        if model.training:
            method.on_step(self.state.global_step, self.state.max_steps)  # warm-ups that follow the run (dkd)
        with _captured_output(model) as captured:
            parts = method(inputs)
        loss = parts["loss"]
        if num_items_in_batch is not None and float(num_items_in_batch) == 0:
            # no labelled row in the whole accumulated batch: weight the micro-batches equally, as Trainer would
            loss = loss / self.current_gradient_accumulation_steps if model.training else loss
        elif num_items_in_batch is not None:
            loss = loss * (_items(labels_of(inputs), getattr(self, "_loss_shifts_labels", False)) / num_items_in_batch)
            if self.args.average_tokens_across_devices:
                # the count is summed over processes and DDP averages gradients: undo the average, as Trainer does
                loss = loss * self.accelerator.num_processes
        return (loss, captured.get("output")) if return_outputs else loss


def _items(labels: torch.Tensor | None, shifted: bool) -> torch.Tensor | int:
    """This micro-batch's count of labels != -100, by the Trainer's own rule (causal-LM labels shifted by one)."""
    if labels is None:
        return 0
    labels = labels[..., 1:] if shifted else labels
    return labels.ne(IGNORE_INDEX).sum()


@contextlib.contextmanager
def _captured_output(model: nn.Module) -> Iterator[dict[str, Any]]:
    """Record `model`'s output during the block (the student's logits for `compute_metrics`), one forward only."""
    captured: dict[str, Any] = {}
    handle = model.register_forward_hook(lambda module, args, output: captured.__setitem__("output", output))
    try:
        yield captured
    finally:
        handle.remove()

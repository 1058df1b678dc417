"""`compress.variants`: compressed versions of the run's teacher and distilled student, built from the
`distill.compress` building blocks and measured by the same evaluation code as every other model (`evaluate_models`:
accuracy, agreement and KL to the teacher, ECE, size, batch-1 latency, throughput), so they share one table.

| kind          | built with                                    | runs in       | what it shows                            |
|---------------|-----------------------------------------------|---------------|------------------------------------------|
| `onnx`        | `compress.export_onnx`                        | ONNX Runtime  | the runtime alone, same fp32 arithmetic  |
| `int8`        | `export_onnx` + `compress.quantize_onnx`      | ONNX Runtime  | dynamic int8 (linear) / static QDQ (conv)|
| `pruned_<p>`  | `compress.prune_unstructured` (p% zeroed)     | PyTorch eager | zeros in dense tensors: no faster        |
| `channels_<p>`| `compress.prune_channels` (torch-pruning)     | PyTorch eager | narrower layers: fewer FLOPs             |

Pruned variants then get a short fine-tune (`compress.finetune`: cross-entropy on the labels, through the one training
loop, which the pipeline passes in as `finetune`; unstructured masks stay in place while it trains, so the zeros stay
zeros); `finetune.epochs: 0` leaves them at the pruning's immediate cost. ONNX variants are files in
`RUN_DIR/variants/`; their `size_bytes` is that file's size, `params` the source model's, and `onnx_max_abs_diff` the
largest absolute logit difference from the PyTorch model they were exported from, over the whole test set. `student_*` variants are
built from every seed's distilled student (`student_int8@3`, ...) and averaged like the students.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from .batch import inputs_of
from .compress import (
    OnnxModule,
    export_onnx,
    make_permanent,
    mask_unstructured,
    onnx_session,
    prune_channels,
    quantize_onnx,
    sparsity,
)
from .compress._optional import require
from .config import VARIANT, Recipe
from .data import DataBundle
from .deploy import _calibration, _check, _tensor_inputs
from .errors import DistillError


class Finetune(Protocol):
    """Trains `model` (the student of a scratch phase named `phase`) for `epochs` epochs at most `max_steps` steps
    with peak learning rate `lr` through the training loop; returns the trained model (frozen, CPU) and the phase's
    summary."""

    def __call__(self, phase: str, model: nn.Module, *, epochs: int, lr: float,
                 max_steps: int | None) -> tuple[nn.Module, dict[str, Any]]: ...


@dataclass
class Variant:
    model: nn.Module
    info: dict[str, Any] = field(default_factory=dict)  # written over the evaluated row (size, runtime, note)


def parse(name: str) -> tuple[str, str, float | None]:
    """`teacher_pruned_50` -> (`teacher`, `pruned`, 0.5); the recipe validated the name."""
    found = VARIANT.match(name)
    assert found, name
    source, kind = found.group(1), found.group(2).split("_")[0]
    pct = found.group(3) or found.group(4)
    return source, kind, None if pct is None else int(pct) / 100


def check(recipe: Recipe, teacher: nn.Module, student: nn.Module, batch: Any) -> None:
    """Before anything is written: the optional packages each variant needs, one input tensor to export or trace
    with (`batch`: an example batch of the data), and a weight layer to work on."""
    for name in recipe.compress.variants if recipe.compress else []:
        source, kind, _ = parse(name)
        if kind in ("onnx", "int8"):
            for module in ("onnx", "onnxscript", "onnxruntime"):
                require(module, "export")
        if kind == "channels":
            require("torch_pruning", "compress")
        if kind != "pruned" and isinstance(inputs_of(batch), dict) and set(inputs_of(batch)) != {"inputs"}:
            raise DistillError(f"compress variant {name!r} exports or traces the model with one input tensor, but "
                               f"this dataset gives {sorted(inputs_of(batch))}; remove it from compress.variants")
        model = teacher if source == "teacher" else student
        if kind != "onnx" and not any(p.ndim >= 2 for p in model.parameters()):
            raise DistillError(f"compress variant {name!r}: the {source} has no Linear or Conv layer to "
                               f"{'quantize' if kind == 'int8' else 'prune'}; remove it from compress.variants")


def build(recipe: Recipe, data: DataBundle, teacher: nn.Module, students: dict[str, nn.Module],
          folder: Path, finetune: Finetune | None = None) -> dict[str, Variant]:
    """Every variant the recipe lists, keyed by name (`student_*` once per distilled student: `distilled@3` ->
    `student_int8@3`). `students` maps the run's distilled phase names (`distilled`, `distilled@<seed>`) to models.
    `finetune`: how pruned variants are fine-tuned (None, or `compress.finetune.epochs: 0`: they are not)."""
    names = recipe.compress.variants if recipe.compress else []
    if not names:
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    example = _tensor_inputs(next(iter(DataLoader(data.test, batch_size=2))))
    out: dict[str, Variant] = {}
    for name in names:
        source, kind, amount = parse(name)
        sources = {"": teacher} if source == "teacher" else {k[len("distilled"):]: m for k, m in students.items()}
        for suffix, model in sources.items():
            model = copy.deepcopy(model).cpu().eval()
            out[name + suffix] = _one(name + suffix, kind, amount, model, example, data, recipe, folder,
                                      finetune if source == "teacher" or not suffix else _tagged(finetune, suffix))
    return out


def _tagged(finetune: Finetune | None, suffix: str) -> Finetune | None:
    """Per-seed student variants fine-tune as phases `<variant>.finetune@<seed>` (the seed tag last, like every
    per-seed phase)."""
    if finetune is None:
        return None

    def tagged(phase: str, model: nn.Module, **kw: Any) -> tuple[nn.Module, dict[str, Any]]:
        return finetune(phase.replace(suffix, "") + suffix, model, **kw)
    return tagged


def _finetuned(name: str, source: str, model: nn.Module, recipe: Recipe,
               finetune: Finetune | None) -> tuple[nn.Module, str]:
    """`model` after `compress.finetune` (or as it is), and the note's words for it."""
    cfg = recipe.compress.finetune if recipe.compress else None
    if finetune is None or cfg is None or cfg.epochs == 0:
        return model, "no fine-tune"
    trained_lr = (recipe.teacher.lr or recipe.train.lr) if source == "teacher" else recipe.train.lr
    lr = cfg.lr if cfg.lr is not None else trained_lr / 10
    max_steps = cfg.steps if cfg.steps is not None else recipe.train.max_steps
    model, summary = finetune(f"{name}.finetune", model, epochs=cfg.epochs, lr=lr, max_steps=max_steps)
    return model.cpu().eval(), f"fine-tuned {summary.get('steps', '?')} steps at lr {lr:g}"


def _one(name: str, kind: str, amount: float | None, model: nn.Module, example: torch.Tensor, data: DataBundle,
         recipe: Recipe, folder: Path, finetune: Finetune | None = None) -> Variant:
    params = sum(p.numel() for p in model.parameters())
    source = name.partition("_")[0]
    if kind == "pruned":  # masks kept through the fine-tune: the pruned weights get no gradient and stay zero
        masked, tuned = _finetuned(name, source, mask_unstructured(model, amount), recipe, finetune)
        pruned = make_permanent(masked)
        return Variant(pruned, {"runtime": "pytorch", "sparsity": sparsity(pruned),
                                "note": f"{100 * amount:.0f}% of weights zeroed (global magnitude), stored and run "
                                        f"dense, {tuned}"})
    if kind == "channels":  # torch-pruning traces the graph through autograd: the frozen teacher must track grads
        pruned = prune_channels(model.requires_grad_(True), amount, example).requires_grad_(False)
        pruned, tuned = _finetuned(name, source, pruned, recipe, finetune)
        return Variant(pruned, {"runtime": "pytorch",
                                "note": f"{100 * amount:.0f}% of channels removed (torch-pruning), {tuned}"})
    fp32 = folder / f"{name}.onnx" if kind == "onnx" else folder / f".{name}.fp32.onnx"
    export_onnx(model, example, fp32)
    if kind == "onnx":
        path, note = fp32, "ONNX Runtime, fp32"
        info: dict[str, Any] = {}
    else:
        path = folder / f"{name}.onnx"
        info = {"int8": quantize_onnx(fp32, path, calibration=_calibration(data, recipe.seed))}
        fp32.unlink(missing_ok=True)
        note = f"ONNX Runtime, int8 ({info['int8']['mode']})"
    module = OnnxModule(onnx_session(path, threads=recipe.eval.threads))  # the threads latency is measured with
    diff = _check(model, path, data)["max_abs_diff"]  # vs the PyTorch model it came from, whole test set
    return Variant(module, {"runtime": "onnxruntime", "params": params, "size_bytes": path.stat().st_size,
                            "note": note, "file": f"variants/{path.name}", "onnx_max_abs_diff": diff, **info})

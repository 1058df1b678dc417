"""Pruning: unstructured global magnitude pruning (`torch.nn.utils.prune`) and structured channel pruning
(`torch-pruning`, Fang et al. 2023, "DepGraph: Towards Any Structural Pruning").

Only the structured kind shrinks the dense tensors, and so the work dense CPU kernels do; unstructured pruning leaves
the shapes as they were and zeroes entries (smaller once compressed, not faster on dense kernels).
Both return a pruned *copy*; the model passed in is left untouched.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune

from ..batch import forward_logits
from ..errors import DistillError
from ._optional import require

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _check_amount(amount: float) -> float:
    if not isinstance(amount, (int, float)) or isinstance(amount, bool) or not 0.0 < float(amount) < 1.0:
        raise DistillError(f"pruning amount must be a fraction in (0, 1), got {amount!r}; pass e.g. 0.5 to prune half")
    return float(amount)


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """`(module, "weight")` for every Linear and Conv layer: the weights magnitude pruning ranks (biases excluded)."""
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]


def sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros over all prunable weights (0.0 for a model without any)."""
    weights = [getattr(m, name) for m, name in prunable_weights(model)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0


def mask_unstructured(model: nn.Module, amount: float) -> nn.Module:
    """A copy of `model` with the `amount` fraction of its smallest-|w| prunable weights masked to zero, ranked
    globally across layers (Han et al. 2015), the masks kept as `torch.nn.utils.prune` reparametrisations
    (`weight_orig` trained, `weight_mask` buffer): training it leaves the pruned weights at zero, since their gradient
    is masked. `make_permanent` turns it back into a plain model. Raises `DistillError` for an amount outside (0, 1)."""
    amount = _check_amount(amount)
    pruned = copy.deepcopy(model)
    params = prunable_weights(pruned)
    if not params:
        raise DistillError(f"{type(model).__name__} has no Linear or Conv layer to prune; pruning needs weight layers")
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    return pruned


def make_permanent(model: nn.Module) -> nn.Module:
    """`model` (in place) with every pruning mask applied and dropped: plain `weight` parameters again, so it saves,
    loads and exports like any model."""
    for module, name in prunable_weights(model):
        if prune.is_pruned(module) and hasattr(module, f"{name}_mask"):
            prune.remove(module, name)  # weight = weight_orig * mask, the reparametrisation dropped
    return model


def prune_unstructured(model: nn.Module, amount: float) -> nn.Module:
    """A copy of `model` with the `amount` fraction of its smallest-|w| prunable weights set to zero, ranked
    globally across layers (Han et al. 2015), the masks made permanent (plain `weight` parameters again, so the
    result saves, loads and exports like any model). Raises `DistillError` for an amount outside (0, 1)."""
    return make_permanent(mask_unstructured(model, amount))


def _output_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """Layers whose outputs are the logits (Linear with `num_classes` outputs): their width is the task's, not
    prunable."""
    return [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]


def prune_channels(model: nn.Module, amount: float, example_inputs: torch.Tensor,
                   ignored_layers: list[nn.Module] | None = None) -> nn.Module:
    """A copy of `model` with the `amount` fraction of channels/units removed from every prunable layer, by L2
    magnitude, keeping dependent layers consistent (torch-pruning's dependency graph). `example_inputs`
    `(B, *input_shape)` traces the graph. The classifier (`Linear` with as many outputs as the logits) keeps its
    outputs unless `ignored_layers` says otherwise. The result has fewer parameters and new layer widths, so it is
    no longer built by the architecture's kwargs. Raises `DistillError` for an amount outside (0, 1)."""
    amount = _check_amount(amount)
    tp = require("torch_pruning", "compress")
    pruned = copy.deepcopy(model).eval()
    with torch.no_grad():
        num_classes = int(forward_logits(pruned, example_inputs).shape[-1])
    ignored = _output_layers(pruned, num_classes) if ignored_layers is None else _same_in(pruned, model, ignored_layers)
    pruner = tp.pruner.MetaPruner(pruned, example_inputs, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=amount, ignored_layers=ignored)
    pruner.step()
    pruned.train(model.training)
    return pruned


def _same_in(copied: nn.Module, original: nn.Module, layers: list[Any]) -> list[nn.Module]:
    """The copies (in `copied`) of `layers` (modules of `original`), matched by their `named_modules()` path."""
    paths = {id(m): name for name, m in original.named_modules()}
    mods = dict(copied.named_modules())
    missing = [layer for layer in layers if id(layer) not in paths]
    if missing:
        raise DistillError("ignored_layers must be modules of the model being pruned; pass layers from that model")
    return [mods[paths[id(layer)]] for layer in layers]

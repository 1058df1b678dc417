"""DistilBERT-style students (Sanh et al. 2019, "DistilBERT, a distilled version of BERT"): the teacher's own
architecture with fewer layers, initialised from a subset of the teacher's layers — by default every other one
(student layer i <- teacher layer 2i, as DistilBERT took one layer out of two) — with everything outside the layer
stack (embeddings, pooler, head) copied from the teacher.

Works on any model whose blocks sit in one `nn.ModuleList` whose length is the config's `num_hidden_layers`
(`bert.encoder.layer`, `model.layers`, ...), built again from a copy of its config via `type(teacher)(config)`:
Hugging Face models, and any module with the same shape.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import DistillError


def layer_stack(model: nn.Module, num_layers: int) -> str:
    """The dotted path of the model's `nn.ModuleList` of `num_layers` blocks of one class (its layer stack)."""
    found = [name for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) == num_layers and len({type(b) for b in m}) == 1]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(found)})"
        raise DistillError(
            f"the teacher has {what} ModuleList of {num_layers} same-class blocks, so its layer stack is ambiguous; "
            "a layer-subset student needs exactly one (as in BERT's encoder.layer)"
        )
    return found[0]


def layer_subset_student(teacher: nn.Module, layers: Sequence[int] | None = None) -> nn.Module:
    """A student of the teacher's class and config with `len(layers)` layers; student layer i is a copy of teacher
    layer `layers[i]` (default `0, 2, 4, ...`), every other parameter and buffer a copy of the teacher's. The teacher
    is not modified. Raises `DistillError` for layer indices out of range, repeated or out of order."""
    config = getattr(teacher, "config", None)
    n = getattr(config, "num_hidden_layers", None)
    if not isinstance(n, int):
        raise DistillError(
            f"a layer-subset student needs a teacher with config.num_hidden_layers (a Hugging Face model), not "
            f"{type(teacher).__name__}"
        )
    layers = list(range(0, n, 2)) if layers is None else [int(i) for i in layers]
    if not layers or any(not 0 <= i < n for i in layers) or any(a >= b for a, b in zip(layers, layers[1:])):
        raise DistillError(
            f"student layers {layers} must be increasing teacher layer indices in [0, {n - 1}] (the teacher has {n} "
            "layers), e.g. [0, 2, 4]"
        )
    stack = layer_stack(teacher, n)
    student_config = copy.deepcopy(config)
    student_config.num_hidden_layers = len(layers)
    student = type(teacher)(student_config)
    source = teacher.state_dict()
    prefix = stack + "."
    state = {}
    for key in student.state_dict():
        if key.startswith(prefix):
            index, rest = key[len(prefix):].split(".", 1)
            state[key] = source[f"{prefix}{layers[int(index)]}.{rest}"]
        else:
            state[key] = source[key]
    with torch.no_grad():
        student.load_state_dict(state)
    student.train(teacher.training)
    return student

"""Feature taps: record what named submodules of an *unmodified* model output, by `named_modules()` path.

    with FeatureTap(model, ["features.1", "features.2"]) as tap:
        logits = forward_with_features(model, inputs, tap)
    tap.features["features.1"]  # (B, C, H, W)

Hooks exist only inside the `with` block (removed on exit, even on error), and `features` is cleared on entry, so a
method that opens a tap around each step's forward pass can never leak hooks or stale tensors into the next step.

Models that already return their hidden states (Hugging Face transformers, `output_hidden_states=True`) are tapped
through that instead of hooks: the path `hidden_states.<i>` names item `i` of `output.hidden_states`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .batch import logits_of
from .errors import DistillError, nearest

HIDDEN_STATES = "hidden_states."


def exposes_hidden_states(model: nn.Module) -> bool:
    """True for models that can return their hidden states (`config.output_hidden_states` exists, as in transformers)."""
    return hasattr(getattr(model, "config", None), "output_hidden_states")


def _first_tensor(output: Any) -> torch.Tensor | None:
    """A module's output as one tensor: the tensor itself, or the first tensor of a tuple / ModelOutput."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    return None


def check_paths(model: nn.Module, paths: Iterable[str], *, role: str = "model") -> None:
    """Raise a one-line `DistillError` for a path that names no submodule, listing the nearest names."""
    names = [n for n, _ in model.named_modules() if n]
    known = set(names)
    for path in paths:
        if path.startswith(HIDDEN_STATES) and exposes_hidden_states(model):
            if not path[len(HIDDEN_STATES):].lstrip("-").isdigit():
                raise DistillError(f"{role} feature path {path!r}: write hidden_states.<layer number>, e.g. hidden_states.3")
            continue
        if path not in known:
            hint = nearest(path, names) or f" (it has: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''})"
            raise DistillError(
                f"the {role} has no submodule {path!r}{hint}; use a path from named_modules() in distill.options.pairs"
            )


class FeatureTap:
    """Context manager recording the outputs of `paths` (submodule names, or `hidden_states.<i>` for HF models).

    `features` maps each path to the tensor recorded during the last forward pass inside the block. With
    `detach=True` the recorded tensors are detached (for a frozen teacher)."""

    def __init__(self, model: nn.Module, paths: Iterable[str], *, detach: bool = False, role: str = "model") -> None:
        self.model = model
        self.paths = list(dict.fromkeys(paths))
        self.detach = detach
        check_paths(model, self.paths, role=role)
        self.hidden = [p for p in self.paths if p.startswith(HIDDEN_STATES) and exposes_hidden_states(model)]
        self.hooked = [p for p in self.paths if p not in self.hidden]
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def wants_hidden_states(self) -> bool:
        return bool(self.hidden)

    def __enter__(self) -> FeatureTap:
        self.features.clear()
        modules = dict(self.model.named_modules())
        try:
            for path in self.hooked:
                self._handles.append(modules[path].register_forward_hook(self._recorder(path)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this tap registered (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _recorder(self, path: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            tensor = _first_tensor(output)
            if tensor is None:
                raise DistillError(f"submodule {path!r} returned {type(output).__name__}, not a tensor; tap another path")
            self.features[path] = tensor.detach() if self.detach else tensor

        return hook

    def record_output(self, output: Any) -> None:
        """Take `hidden_states.<i>` features from a model output (a no-op when none are wanted)."""
        if not self.hidden:
            return
        states = getattr(output, "hidden_states", None)
        if states is None and isinstance(output, Mapping):
            states = output.get("hidden_states")
        if states is None:
            raise DistillError("the model did not return hidden_states; it cannot be tapped by hidden_states.<i>")
        for path in self.hidden:
            i = int(path[len(HIDDEN_STATES):])
            if not -len(states) <= i < len(states):
                raise DistillError(f"{path!r} is out of range: the model returns {len(states)} hidden states")
            self.features[path] = states[i].detach() if self.detach else states[i]


def call_model(model: nn.Module, inputs: Any, **extra: Any) -> Any:
    """`model(inputs, **extra)` for a tensor, or `model(**inputs, **extra)` for a dict of keyword tensors."""
    if isinstance(inputs, Mapping):
        kwargs = {**inputs, **extra}
        return model(kwargs.pop("inputs"), **kwargs) if "inputs" in kwargs else model(**kwargs)
    return model(inputs, **extra)


def forward_with_features(model: nn.Module, inputs: Any, tap: FeatureTap) -> torch.Tensor:
    """Run `model` on batch inputs (tensor or dict of keyword tensors) inside an open `tap`; return its logits.

    Asks for `output_hidden_states=True` only when the tap wants hidden states."""
    out = call_model(model, inputs, **({"output_hidden_states": True} if tap.wants_hidden_states else {}))
    tap.record_output(out)
    return logits_of(out)

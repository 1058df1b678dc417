"""Automatic teacher <-> student layer pairing, and the projectors that make paired features comparable.

From one example batch we find each model's *stages* (`stage_paths`) — the modules timm's `feature_info` names; else
the model's own numbered stage containers (`layer1 … layer4` of a torchvision ResNet, `stages.0 …`); else the blocks
of its trunk (the `nn.Sequential`/`nn.ModuleList` with the most parameterised children, e.g. `features.0,
features.1` of our CNN, `encoder.layer.*` of a BERT); or `hidden_states.<i>` for models that return hidden states —
and give each a depth fraction `(i + 1) / n`. Every
student stage is paired with the teacher stage of nearest depth whose output shape is compatible with the method:

- `project` (fitnet, cosine): same rank and same spatial/sequence size; a 1×1 conv (maps) or linear (vectors,
  tokens) projector maps student channels to teacher channels; none when shapes already match;
- `attention`: both `(B, C, H, W)` maps; channel counts may differ, no projector;
- `relation` (rkd, pkt, crd): anything, compared as pooled `(B, D)` vectors; no projector.

Recipes may name the pairs instead: `distill.options.pairs: [[student_path, teacher_path], ...]`.
Projectors are submodules of the *method*, never of the student, so they train with it and are never exported.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .batch import inputs_of
from .errors import DistillError
from .features import (
    FeatureTap,
    call_model,
    exposes_hidden_states,
    forward_with_features,
)

Mode = Literal["project", "attention", "relation"]


@dataclass(frozen=True)
class Stage:
    path: str
    shape: tuple[int, ...]  # per-example output shape, e.g. (C, H, W)
    depth: float  # (i + 1) / n along the trunk


@dataclass(frozen=True)
class Pair:
    student: str
    teacher: str
    student_shape: tuple[int, ...]
    teacher_shape: tuple[int, ...]
    projector: Literal["none", "identity", "linear", "conv1x1"]
    student_depth: float | None = None
    teacher_depth: float | None = None


def teacher_model(source: Any, method: str = "this method") -> nn.Module:
    """The frozen model behind a teacher source; feature methods need one (not a cache or an ensemble)."""
    model = getattr(source, "model", None)
    if not isinstance(model, nn.Module):
        raise DistillError(f"{method} taps teacher features and needs a single live teacher model, not {type(source).__name__}")
    return model


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _n_params(model: nn.Module, paths: Sequence[str]) -> int:
    modules = dict(model.named_modules())
    return sum(p.numel() for path in paths for p in modules[path].parameters())


def _trunk(model: nn.Module) -> list[str]:
    """Paths of the blocks of the model's trunk: the children (with parameters) of the container that has most."""
    best: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Sequential, nn.ModuleList)):
            kids = [f"{name}.{k}" if name else k for k, m in module.named_children() if _has_params(m)]
            if len(kids) > len(best):
                best = kids
    if not best:  # no container: the model's own parameterised children
        best = [k for k, m in model.named_children() if _has_params(m)]
    return best


_NUMBERED = re.compile(r"^(.*?)(\d+)$")


def _stage_containers(model: nn.Module) -> list[str]:
    """The model's own stage containers: two or more sibling submodules that hold blocks (not single layers) and are
    numbered under one prefix — `layer1 … layer4` of a torchvision ResNet, `stage1 …`, `blocks.0 …`, `stages.0 …` —
    in number order. Of several such groups, the one holding the most parameters (the outermost); [] if none."""
    best: list[str] = []
    best_params = 0
    for name, module in model.named_modules():
        groups: dict[str, list[tuple[int, str]]] = {}
        for child_name, child in module.named_children():
            match = _NUMBERED.match(child_name)
            if match and any(True for _ in child.children()) and _has_params(child):
                path = f"{name}.{child_name}" if name else child_name
                groups.setdefault(match.group(1), []).append((int(match.group(2)), path))
        for members in groups.values():
            if len(members) < 2:
                continue
            paths = [path for _, path in sorted(members)]
            params = _n_params(model, paths)
            if params > best_params:
                best, best_params = paths, params
    return best


def _feature_info(model: nn.Module) -> list[str]:
    """Stage paths a timm model declares (`model.feature_info`: a list of dicts with `module`, or a `FeatureInfo`)."""
    info = getattr(model, "feature_info", None)
    if info is None:
        return []
    if callable(getattr(info, "module_name", None)):
        names = list(info.module_name())
    elif isinstance(info, (list, tuple)):
        names = [d.get("module") for d in info if isinstance(d, dict)]
    else:
        return []
    known = {n for n, _ in model.named_modules() if n}
    return [n for n in dict.fromkeys(names) if isinstance(n, str) and n in known]


def stage_paths(model: nn.Module) -> list[str]:
    """Where a model's stages are, in depth order: timm's `feature_info` when the model declares it; else its own
    numbered stage containers when they hold more of the model than the trunk's blocks do (a ResNet's `layer1 …
    layer4`, not the two blocks of `layer1`); else the trunk (`_trunk`)."""
    declared = _feature_info(model)
    if len(declared) >= 2:
        return declared
    trunk, stages = _trunk(model), _stage_containers(model)
    if stages and (not trunk or _n_params(model, stages) > _n_params(model, trunk)):
        return stages
    return trunk


@torch.no_grad()
def _shapes(model: nn.Module, paths: Sequence[str], batch: Any, role: str) -> tuple[dict[str, tuple[int, ...]], torch.Tensor]:
    """Per-example output shapes of `paths` on one batch (eval mode, no grad; the model's mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        with FeatureTap(model, paths, detach=True, role=role) as tap:
            logits = forward_with_features(model, inputs_of(batch), tap)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise DistillError(f"the {role} failed while tapping features ({' '.join(str(exc).split())[:160]})") from None
    finally:
        model.train(was_training)
    return {p: tuple(t.shape[1:]) for p, t in tap.features.items()}, logits


def find_stages(model: nn.Module, batch: Any, *, role: str = "model") -> list[Stage]:
    """The model's stages in depth order with their output shapes, found by running one example batch."""
    if exposes_hidden_states(model):
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                states = getattr(call_model(model, inputs_of(batch), output_hidden_states=True), "hidden_states", None)
        finally:
            model.train(was_training)
        n = len(states or ()) - 1  # hidden_states[0] is the embedding output
        return [Stage(f"hidden_states.{i}", tuple(states[i].shape[1:]), i / n) for i in range(1, n + 1)]
    paths = stage_paths(model)
    if not paths:
        return []
    shapes, logits = _shapes(model, paths, batch, role)
    # The classifier head (the last trunk block, when its output has the logits' shape) is not a feature stage.
    if paths and shapes.get(paths[-1]) == tuple(logits.shape[1:]):
        paths = paths[:-1]
    return [Stage(p, shapes[p], (i + 1) / len(paths)) for i, p in enumerate(paths) if p in shapes]


def projector_kind(student: tuple[int, ...], teacher: tuple[int, ...], mode: Mode) -> str | None:
    """How to compare a student feature with a teacher feature of these per-example shapes; None if impossible."""
    if mode == "relation":
        return "none"
    if mode == "attention":
        return "none" if len(student) == 3 and len(teacher) == 3 else None
    if student == teacher:
        return "identity"
    if len(student) == len(teacher) == 1:
        return "linear"  # (D,)
    if len(student) == len(teacher) == 2 and student[0] == teacher[0]:
        return "linear"  # (T, D): same length, project the width
    if len(student) == len(teacher) == 3 and student[1:] == teacher[1:]:
        return "conv1x1"  # (C, H, W): same H×W, project the channels
    return None


def _why(student: tuple[int, ...], teacher: tuple[int, ...], mode: Mode) -> str:
    if mode == "attention":
        return "attention transfer needs (C, H, W) feature maps on both sides"
    if len(student) != len(teacher):
        return "their ranks differ"
    return "only the channel/width dimension can be projected; the other sizes must match"


def propose_pairs(
    student: nn.Module,
    teacher: nn.Module,
    batch: Any,
    *,
    mode: Mode = "project",
    select: Literal["all", "last", "middle"] = "all",
    overrides: Sequence[Sequence[str]] | None = None,
    method: str = "this method",
) -> list[Pair]:
    """Pairs of (student stage, teacher stage) for a method; `overrides` replaces the automatic choice.

    `select`: `all` student stages, the `last` one, or one `middle` one (the pairable stage nearest half depth).

    Raises a one-line `DistillError` for unknown paths, unprojectable shapes, or models with no tappable stages."""
    if overrides:
        pairs = []
        for item in overrides:
            if len(item) != 2:
                raise DistillError(f"distill.options.pairs entries are [student_path, teacher_path], got {list(item)!r}")
            s_path, t_path = item
            s_shape = _shapes_checked(student, s_path, batch, "student")
            t_shape = _shapes_checked(teacher, t_path, batch, "teacher")
            kind = projector_kind(s_shape, t_shape, mode)
            if kind is None:
                raise DistillError(
                    f"{method} cannot compare student {s_path!r} {s_shape} with teacher {t_path!r} {t_shape}: "
                    f"{_why(s_shape, t_shape, mode)}; choose another pair in distill.options.pairs"
                )
            pairs.append(Pair(s_path, t_path, s_shape, t_shape, kind))  # type: ignore[arg-type]
        return pairs
    s_stages = find_stages(student, batch, role="student")
    t_stages = find_stages(teacher, batch, role="teacher")
    for role, stages in (("student", s_stages), ("teacher", t_stages)):
        if not stages:
            raise DistillError(
                f"{method} found no feature stages to tap in the {role} (no blocks before its output); "
                "name the layers in distill.options.pairs: [[student_path, teacher_path]]"
            )
    if select == "last":
        s_stages = s_stages[-1:]
    elif select == "middle":  # one guided stage: the pairable student stage nearest half depth (FitNets' hint)
        s_stages = sorted(s_stages, key=lambda s: (abs(s.depth - 0.5), s.depth))
    pairs = []
    for s in s_stages:
        fits = [t for t in t_stages if projector_kind(s.shape, t.shape, mode) is not None]
        if not fits:
            continue
        t = min(fits, key=lambda t: (abs(t.depth - s.depth), -t.depth))
        kind = projector_kind(s.shape, t.shape, mode)
        pairs.append(Pair(s.path, t.path, s.shape, t.shape, kind, s.depth, t.depth))  # type: ignore[arg-type]
        if select == "middle":
            break
    if not pairs and mode == "attention":
        raise DistillError(
            f"{method} transfers spatial attention and needs (C, H, W) feature maps in both models, but the student's "
            f"stages give {', '.join(str(s.shape) for s in s_stages)}; use convolutional models or another method"
        )
    if not pairs:
        s_desc = ", ".join(f"{s.path} {s.shape}" for s in s_stages)
        t_desc = ", ".join(f"{t.path} {t.shape}" for t in t_stages)
        raise DistillError(
            f"{method} found no student stage whose output can be compared with a teacher stage "
            f"(student: {s_desc}; teacher: {t_desc}); name compatible layers in distill.options.pairs"
        )
    return pairs


def _shapes_checked(model: nn.Module, path: str, batch: Any, role: str) -> tuple[int, ...]:
    shapes, _ = _shapes(model, [path], batch, role)  # FeatureTap checks the path and lists the nearest names
    if path not in shapes:
        raise DistillError(f"the {role}'s submodule {path!r} did not run on the example batch; tap a layer that runs")
    return shapes[path]


def build_projector(pair: Pair) -> nn.Module:
    """A trainable map from the student's feature to the teacher's shape: 1×1 conv, linear, or identity."""
    if pair.projector == "conv1x1":
        return nn.Conv2d(pair.student_shape[0], pair.teacher_shape[0], kernel_size=1, bias=False)
    if pair.projector == "linear":
        return nn.Linear(pair.student_shape[-1], pair.teacher_shape[-1])
    return nn.Identity()


def projector_params(pair: Pair) -> int:
    return sum(p.numel() for p in build_projector(pair).parameters())

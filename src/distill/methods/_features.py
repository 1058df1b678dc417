"""Shared plumbing of the feature methods (composition, not a base class): options, the pairing + projectors module,
and the one way the logit terms are combined with a feature term.

Every feature method's loss is `ce_weight · CE + kd_weight · KD(T) + feature_weight · feature`, with `T` and the KD
term of `distill.temperature` (Hinton et al. 2015); `distill.alpha` is not used by feature methods (a recipe that sets
it is refused). How a method's per-pair losses make `feature` — a sum over pairs (each pair weighted
`feature_weight`, as the attention-transfer paper sums over layer groups) or a mean (the weights share
`feature_weight`) — is its `pair_reduction`, stated in each method's docstring.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..batch import feature_mask, inputs_of, labels_of, token_mask
from ..features import FeatureTap, forward_with_features
from ..losses import hard_loss, kd_loss
from ..pairing import Pair, build_projector, propose_pairs, teacher_model
from .base import Method, register_method


class FeatureOptions(BaseModel):
    """Options every feature method accepts (each method adds its own and sets its `feature_weight` default)."""

    model_config = ConfigDict(extra="forbid")
    pairs: list[tuple[str, str]] | None = None  # [[student_path, teacher_path], ...]; default: automatic pairing
    feature_weight: float = Field(default=1.0, ge=0)
    kd_weight: float = Field(default=0.0, ge=0)  # add Hinton's soft term (x T^2) at distill.temperature
    ce_weight: float = Field(default=1.0, ge=0)


@dataclass
class Tapped:
    student_logits: torch.Tensor  # (B, C)
    teacher_logits: torch.Tensor  # (B, C), detached
    student: list[torch.Tensor]  # per pair, projected where the pair has a projector
    teacher: list[torch.Tensor]  # per pair, detached


class FeatureBridge(nn.Module):
    """The pairs of one run and their projectors (trainable, owned by the method, never by the student)."""

    def __init__(self, pairs: Sequence[Pair]) -> None:
        super().__init__()
        self.pairs = list(pairs)
        self.projectors = nn.ModuleList(build_projector(p) for p in self.pairs)

    def run(self, student: nn.Module, teacher_source: Any, batch: Any) -> Tapped:
        """Forward both models once with taps open only for this call (hooks cannot outlive the step)."""
        inputs = inputs_of(batch)
        with FeatureTap(student, [p.student for p in self.pairs]) as s_tap:
            s_logits = forward_with_features(student, inputs, s_tap)  # (B, C)
        teacher = teacher_model(teacher_source)
        teacher.eval()
        no_autocast = torch.autocast(device_type=_device_of(batch).type, enabled=False)  # full-precision teacher
        with FeatureTap(teacher, [p.teacher for p in self.pairs], detach=True) as t_tap, torch.inference_mode(), no_autocast:
            t_logits = forward_with_features(teacher, inputs, t_tap)
        # Inference tensors cannot be saved for backward: clone them outside inference mode.
        t_feats = [t_tap.features[p.teacher].clone() for p in self.pairs]
        s_feats = [proj(s_tap.features[p.student]) for p, proj in zip(self.pairs, self.projectors)]
        return Tapped(s_logits, t_logits.float().clone(), s_feats, t_feats)


def pairs_for(cls: Any, student: nn.Module, teacher: nn.Module, batch: Any, options: BaseModel) -> list[Pair]:
    """The pairing a feature method class uses (its `pair_mode`, `pair_select`), with recipe overrides."""
    return propose_pairs(
        student, teacher, batch, mode=cls.pair_mode, select=cls.pair_select,
        overrides=getattr(options, "pairs", None), method=cls.method_name,
    )


def check_features(cls: Any, student: nn.Module, teacher: nn.Module, batch: Any, options: dict[str, Any]) -> None:
    """A feature method's `check`: compute its pairing once before the run directory exists (raises on bad input)."""
    pairs_for(cls, student, teacher, batch, cls.Options(**options))


def build_bridge(method: Any, batch: Any) -> FeatureBridge:
    """A feature method's `setup`: pair its stages on the example batch and build the projectors on its device."""
    teacher = teacher_model(method.teacher, method.method_name)
    bridge = FeatureBridge(pairs_for(type(method), method.student, teacher, batch, method.options))
    return bridge.to(_device_of(batch))


def _device_of(batch: Any) -> torch.device:
    x = inputs_of(batch)
    if isinstance(x, dict):
        x = next(iter(x.values()))
    return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")


def combine(method: Any, tapped: Tapped, batch: Any, feature: torch.Tensor) -> dict[str, torch.Tensor]:
    """`ce_weight · CE + kd_weight · KD + feature_weight · feature`, with every part logged."""
    o = method.options
    labels = labels_of(batch)
    s = tapped.student_logits
    mask = token_mask(batch, s)  # (B, T) for sequence logits, else None
    ce = hard_loss(s, labels, mask=mask)
    loss = o.ce_weight * ce + o.feature_weight * feature
    out = {"hard": ce.detach(), "feature": feature.detach()}
    if o.kd_weight > 0:
        soft = kd_loss(s, tapped.teacher_logits, temperature=method.temperature, mask=mask)
        loss = loss + o.kd_weight * soft
        out["soft"] = soft.detach()
    return {"loss": loss, **out}


def over_pairs(losses: list[torch.Tensor], reduction: str) -> torch.Tensor:
    """Combine per-pair losses: `sum` (each pair carries the full feature weight) or `mean`."""
    stacked = torch.stack(losses)
    return stacked.sum() if reduction == "sum" else stacked.mean()


def pairwise_method(
    name: str,
    options: type[FeatureOptions],
    *,
    mode: str,
    select: str,
    pair_loss: Callable[[torch.Tensor, torch.Tensor, Any, torch.Tensor | None], torch.Tensor],
    reduction: Literal["sum", "mean"],
    doc: str | None = None,
) -> type[Method]:
    """Build and register a feature method whose feature term is `reduction_pairs pair_loss(student_f, teacher_f,
    options, mask)` (sum or mean over the pairs; `mask` is `batch.feature_mask` of the teacher feature: the real
    tokens `(B, T)` of hidden states, None for images and vectors).

    `mode`/`select` choose the pairing (`pairing.propose_pairs`); the loss is combined with CE and KD by `combine`.
    One call per method file keeps each method a docstring, an options model and this line.
    """

    def check(cls, student, teacher, example_batch, opts, *, extra=()) -> None:  # noqa: ANN001
        check_features(cls, student, teacher, example_batch, opts)

    def setup(self, example_batch: Any, *, num_examples: int | None = None) -> None:
        self.bridge = build_bridge(self, example_batch)

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        f = self.bridge.run(self.student, self.teacher, batch)
        losses = [pair_loss(s, t, self.options, feature_mask(batch, t)) for s, t in zip(f.student, f.teacher)]
        feature = over_pairs(losses, reduction)
        return combine(self, f, batch, feature)

    caveat = "its loss relates the examples within one batch, which under accumulation is a micro-batch" \
        if mode == "relation" else None
    attrs = {"accumulation_caveat": caveat, "token_features": mode != "relation",
             "runs_teacher_models": True, "uses": frozenset({"temperature"}), "Options": options, "method_name": name,
             "pair_mode": mode, "pair_select": select, "pair_reduction": reduction, "__doc__": doc,
             "check": classmethod(check), "setup": setup, "forward": forward}
    cls = type(name.capitalize(), (Method,), attrs)
    return register_method(name)(cls)

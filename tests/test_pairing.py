"""Automatic pairing, recipe overrides, bad input, projectors kept out of the student, `distill pairs`."""

from __future__ import annotations

import pytest
import torch

from distill.errors import DistillError
from distill.models import create_model
from distill.pairing import build_projector, find_stages, propose_pairs

BATCH = {"inputs": torch.randn(2, 1, 8, 8), "labels": torch.tensor([0, 1]), "index": torch.tensor([0, 1])}


def cnn(*channels: int):  # noqa: ANN201
    return create_model("cnn", input_shape=(1, 8, 8), num_classes=10, channels=channels)


def mlp(*hidden: int):  # noqa: ANN201
    return create_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=hidden)


def test_stages_skip_the_head_and_carry_depth() -> None:
    stages = find_stages(cnn(4, 8, 16), BATCH)
    assert [s.path for s in stages] == ["features.0", "features.1", "features.2"]
    assert [s.shape for s in stages] == [(4, 4, 4), (8, 2, 2), (16, 1, 1)]
    assert stages[-1].depth == 1.0
    assert [s.path for s in find_stages(mlp(16, 8), BATCH)] == ["net.1", "net.3"]  # net.5 is the head


def test_auto_pairs_by_depth_and_shape() -> None:
    pairs = propose_pairs(cnn(4, 8), cnn(8, 16, 32), BATCH, mode="project")
    # student features.1 (8, 2, 2) must pair with a teacher stage of the same H×W: features.1, not the deeper one
    assert [(p.student, p.teacher, p.projector) for p in pairs] == [
        ("features.0", "features.0", "conv1x1"), ("features.1", "features.1", "conv1x1")]
    last = propose_pairs(cnn(4, 8), cnn(8, 16, 32), BATCH, mode="relation", select="last")
    assert [(p.student, p.teacher) for p in last] == [("features.1", "features.2")]
    vec = propose_pairs(mlp(8), mlp(32, 32), BATCH)
    assert [(p.student, p.teacher, p.projector) for p in vec] == [("net.1", "net.3", "linear")]


def test_overrides_and_projector_shapes() -> None:
    pairs = propose_pairs(cnn(4, 8), cnn(8, 16), BATCH, overrides=[["features.1", "features.1"]])
    assert [(p.student, p.teacher) for p in pairs] == [("features.1", "features.1")]
    proj = build_projector(pairs[0])
    assert proj(torch.randn(2, 8, 2, 2)).shape == (2, 16, 2, 2)


def test_bad_pairs_are_one_clear_error() -> None:
    with pytest.raises(DistillError, match=r"student has no submodule 'features.7'"):
        propose_pairs(cnn(4, 8), cnn(8, 16), BATCH, overrides=[["features.7", "features.0"]])
    with pytest.raises(DistillError, match=r"cannot compare student 'features.0'.*only the channel"):
        propose_pairs(cnn(4, 8), cnn(8, 16), BATCH, overrides=[["features.0", "features.1"]], method="fitnet")
    with pytest.raises(DistillError, match="attention.*feature maps"):
        propose_pairs(mlp(8), mlp(16), BATCH, mode="attention", method="attention")
    with pytest.raises(DistillError, match="no feature stages to tap in the student"):
        propose_pairs(mlp(), mlp(16), BATCH, method="fitnet")


class FakeHF(torch.nn.Module):
    """A transformers-like model: `config.output_hidden_states` and `hidden_states` in its output."""

    def __init__(self, width: int, layers: int) -> None:
        from types import SimpleNamespace

        super().__init__()
        self.config = SimpleNamespace(output_hidden_states=False)
        self.embed = torch.nn.Linear(4, width)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(width, width) for _ in range(layers))
        self.head = torch.nn.Linear(width, 3)

    def forward(self, input_ids: torch.Tensor, output_hidden_states: bool = False):  # noqa: ANN201
        from types import SimpleNamespace

        h = self.embed(input_ids)
        states = [h]
        for layer in self.layers:
            h = layer(h)
            states.append(h)
        return SimpleNamespace(logits=self.head(h), hidden_states=tuple(states) if output_hidden_states else None)


def test_models_with_hidden_states_pair_through_them() -> None:
    batch = {"input_ids": torch.randn(2, 5, 4), "labels": torch.tensor([0, 1])}
    pairs = propose_pairs(FakeHF(6, 2), FakeHF(12, 4), batch)
    assert [(p.student, p.teacher, p.projector) for p in pairs] == [
        ("hidden_states.1", "hidden_states.2", "linear"), ("hidden_states.2", "hidden_states.4", "linear")]
    assert build_projector(pairs[0])(torch.randn(2, 5, 6)).shape == (2, 5, 12)

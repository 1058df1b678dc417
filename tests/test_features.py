"""FeatureTap: records by path, cleared per use, hooks removed on exit and on error; HF hidden-state path."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from distill.errors import DistillError
from distill.features import FeatureTap, forward_with_features
from distill.models import create_model


def cnn() -> nn.Module:
    return create_model("cnn", input_shape=(1, 8, 8), num_classes=10, channels=(4, 8))


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_records_named_outputs_and_removes_hooks() -> None:
    model, x = cnn(), torch.randn(2, 1, 8, 8)
    with FeatureTap(model, ["features.0", "features.1"]) as tap:
        assert hook_count(model) == 2
        logits = forward_with_features(model, x, tap)
        assert tap.features["features.0"].shape == (2, 4, 4, 4)
        assert tap.features["features.1"].shape == (2, 8, 2, 2)
        assert tap.features["features.1"].requires_grad
    assert logits.shape == (2, 10)
    assert hook_count(model) == 0


def test_cleared_on_each_use_and_detach_option() -> None:
    model = cnn()
    tap = FeatureTap(model, ["features.0"], detach=True)
    with tap:
        model(torch.randn(3, 1, 8, 8))
    assert not tap.features["features.0"].requires_grad
    with tap:
        assert tap.features == {}  # nothing stale from the last step


def test_hooks_removed_even_on_error() -> None:
    model = cnn()
    with pytest.raises(RuntimeError):
        with FeatureTap(model, ["features.0"]):
            model(torch.randn(2, 3, 8, 8))  # wrong channel count
    assert hook_count(model) == 0


def test_unknown_path_lists_nearest_names() -> None:
    with pytest.raises(DistillError, match=r"no submodule 'feature.1'.*did you mean 'features.1'"):
        FeatureTap(cnn(), ["feature.1"])


class FakeHF(nn.Module):
    """Stands in for a transformers model: has `config.output_hidden_states` and returns `hidden_states`."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(output_hidden_states=False)
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        self.head = nn.Linear(4, 2)
        self.calls: list[bool] = []

    def forward(self, input_ids: torch.Tensor, output_hidden_states: bool = False) -> SimpleNamespace:
        self.calls.append(output_hidden_states)
        h, states = input_ids, [input_ids]
        for layer in self.layers:
            h = layer(h)
            states.append(h)
        return SimpleNamespace(logits=self.head(h), hidden_states=tuple(states) if output_hidden_states else None)


def test_hidden_states_are_used_instead_of_hooks() -> None:
    model, x = FakeHF(), torch.randn(2, 5, 4)
    with FeatureTap(model, ["hidden_states.2", "layers.0"]) as tap:
        assert hook_count(model) == 1  # only the module path is hooked
        logits = forward_with_features(model, {"input_ids": x}, tap)
    assert model.calls == [True]
    assert logits.shape == (2, 5, 2)
    torch.testing.assert_close(tap.features["hidden_states.2"], model.layers[1](model.layers[0](x)))
    assert tap.features["layers.0"].shape == (2, 5, 4)
    with pytest.raises(DistillError, match="out of range"):
        with FeatureTap(model, ["hidden_states.9"]) as tap:
            forward_with_features(model, {"input_ids": x}, tap)

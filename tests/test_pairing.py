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


class BasicBlock(torch.nn.Module):
    """torchvision's ResNet BasicBlock: two 3×3 conv-BN, a shortcut (1×1 conv-BN when the shape changes), ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNetLayout(torch.nn.Module):
    """The torchvision ResNet layout: stem conv/bn/relu/maxpool, `layer1` … `layer4` (separate Sequentials of
    blocks), avgpool, fc."""

    def __init__(self, width: int, blocks: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 1, 1)
        widths = [width, 2 * width, 4 * width, 8 * width]
        c_in = width
        for i, c in enumerate(widths, start=1):
            stride = 1 if i == 1 else 2
            layer = [BasicBlock(c_in, c, stride)] + [BasicBlock(c, c) for _ in range(blocks - 1)]
            setattr(self, f"layer{i}", nn.Sequential(*layer))
            c_in = c
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def test_resnet_layout_stages_are_its_layers() -> None:
    torch.manual_seed(0)
    stages = find_stages(ResNetLayout(4), BATCH)
    assert [s.path for s in stages] == ["layer1", "layer2", "layer3", "layer4"]
    assert [s.depth for s in stages] == [0.25, 0.5, 0.75, 1.0]
    assert [s.shape for s in stages] == [(4, 8, 8), (8, 4, 4), (16, 2, 2), (32, 1, 1)]


@pytest.mark.parametrize(("mode", "select", "projector"), [("project", "all", "conv1x1"), ("attention", "all", "none")])
def test_resnet_layouts_pair_shallow_with_shallow_and_deep_with_deep(mode: str, select: str, projector: str) -> None:
    torch.manual_seed(0)
    pairs = propose_pairs(ResNetLayout(4, blocks=1), ResNetLayout(8, blocks=3), BATCH, mode=mode, select=select)  # type: ignore[arg-type]
    assert [(p.student, p.teacher) for p in pairs] == [(f"layer{i}", f"layer{i}") for i in range(1, 5)]
    assert {p.projector for p in pairs} == {projector}
    middle = propose_pairs(ResNetLayout(4, blocks=1), ResNetLayout(8, blocks=3), BATCH, select="middle")
    assert [(p.student, p.teacher) for p in middle] == [("layer2", "layer2")]  # FitNets' one hint


def test_declared_feature_info_names_the_stages() -> None:
    model = ResNetLayout(4)
    model.feature_info = [{"num_chs": 4, "reduction": 1, "module": "relu"},  # timm's list-of-dicts form
                          *({"num_chs": 4 * 2**i, "reduction": 2**i, "module": f"layer{i + 1}"} for i in range(4))]
    assert [s.path for s in find_stages(model, BATCH)] == ["relu", "layer1", "layer2", "layer3", "layer4"]

"""Compression building blocks on tiny models: pruning amounts and shapes, ONNX int8 refusals, metadata round trips,
and that an ONNX Runtime session is measured by the engine's own `speed`."""

from __future__ import annotations

import pytest
import torch
from factories import elementwise
from torch import nn

from distill.compress import (
    make_permanent,
    mask_unstructured,
    OnnxModule,
    export_onnx,
    onnx_session,
    prunable_weights,
    prune_channels,
    prune_unstructured,
    quantize_onnx,
    read_metadata,
    save_safetensors,
    sparsity,
)
from distill.engine.evaluate import speed
from distill.errors import DistillError
from distill.models import count_params, create_model


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return create_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[32, 16])


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return create_model("cnn", input_shape=(1, 8, 8), num_classes=10, channels=[8, 16])


@pytest.mark.parametrize("amount", [0.5, 0.8])
@pytest.mark.parametrize("make", [_mlp, _cnn])
def test_unstructured_pruning_zeroes_exactly_that_fraction(make, amount) -> None:
    model = make()
    weights = [getattr(m, n).detach().clone() for m, n in prunable_weights(model)]
    total = sum(w.numel() for w in weights)
    pruned = prune_unstructured(model, amount)
    assert sparsity(model) == 0.0  # the original is untouched
    zeros = sum(int((getattr(m, n) == 0).sum()) for m, n in prunable_weights(pruned))
    assert zeros == round(amount * total)  # L1Unstructured removes round(amount * n) weights
    assert sparsity(pruned) == pytest.approx(amount, abs=1 / total)
    # Permanent: plain parameters again, no masks or hooks left behind.
    names = {n for n, _ in pruned.named_parameters()}
    assert not any(n.endswith("_orig") for n in names) and not any(n.endswith("_mask") for n, _ in pruned.named_buffers())
    assert all(not m._forward_pre_hooks for m in pruned.modules())
    # Global magnitude: every surviving weight is at least as large as every removed one, across layers.
    before = torch.cat([w.abs().flatten() for w in weights])
    after = torch.cat([getattr(m, n).detach().flatten() for m, n in prunable_weights(pruned)])
    kept, removed = before[after != 0], before[after == 0]
    assert kept.min() >= removed.max()
    assert pruned(torch.randn(3, 1, 8, 8)).shape == (3, 10)


@pytest.mark.parametrize("make", [_mlp, _cnn])
def test_structured_pruning_shrinks_and_still_runs(make) -> None:
    pytest.importorskip("torch_pruning")
    model = make().eval()
    x = torch.randn(4, 1, 8, 8)
    pruned = prune_channels(model, 0.5, x[:1])
    assert count_params(pruned) < 0.6 * count_params(model)  # half the widths: well under 60% of the parameters
    assert count_params(model) == count_params(make())  # the original is untouched
    with torch.no_grad():
        assert pruned(x).shape == (4, 10)
    hidden = [m for m in pruned.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert hidden[-1].out_features == 10  # the classifier keeps one output per class
    widths = [getattr(m, "out_features", None) or m.out_channels for m in hidden[:-1]]
    originals = [getattr(m, "out_features", None) or m.out_channels
                 for m in make().modules() if isinstance(m, (nn.Linear, nn.Conv2d))][:-1]
    assert widths == [w // 2 for w in originals]


@pytest.mark.parametrize("amount", [0, 1, 1.0, -0.1, 1.5, True, "0.5"])
def test_pruning_amount_outside_zero_one_is_refused(amount) -> None:
    with pytest.raises(DistillError, match=r"in \(0, 1\)"):
        prune_unstructured(_mlp(), amount)
    with pytest.raises(DistillError, match=r"in \(0, 1\)"):
        prune_channels(_mlp(), amount, torch.randn(1, 1, 8, 8))


def test_pruning_a_model_without_weight_layers_is_refused() -> None:
    with pytest.raises(DistillError, match="no Linear or Conv"):
        prune_unstructured(elementwise(), 0.5)


def test_safetensors_metadata_round_trip(tmp_path) -> None:
    meta = {"architecture": {"name": "mlp", "kwargs": {"hidden": [32, 16]}}, "input_shape": [1, 8, 8]}
    path = save_safetensors(_mlp(), tmp_path / "m.safetensors", meta)
    assert read_metadata(path) == meta
    assert not list(tmp_path.glob(".*.tmp"))


def _onnx(model: nn.Module, path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    export_onnx(model.eval(), torch.randn(2, 1, 8, 8), path, metadata={"architecture": {"name": "x"}})


def test_onnx_export_keeps_metadata_and_dynamic_batch(tmp_path) -> None:
    model = _cnn().eval()
    _onnx(model, tmp_path / "m.onnx")
    assert read_metadata(tmp_path / "m.onnx") == {"architecture": {"name": "x"}}
    session = onnx_session(tmp_path / "m.onnx")
    for n in (1, 7):
        x = torch.randn(n, 1, 8, 8)
        with torch.no_grad():
            assert (OnnxModule(session)(x) - model(x)).abs().max() <= 1e-4


def test_int8_refusals(tmp_path) -> None:
    _onnx(elementwise(), tmp_path / "e.onnx")
    with pytest.raises(DistillError, match="nothing to quantize"):
        quantize_onnx(tmp_path / "e.onnx", tmp_path / "e.int8.onnx")
    _onnx(_cnn(), tmp_path / "c.onnx")
    with pytest.raises(DistillError, match="calibration"):
        quantize_onnx(tmp_path / "c.onnx", tmp_path / "c.int8.onnx")
    assert not (tmp_path / "e.int8.onnx").exists() and not (tmp_path / "c.int8.onnx").exists()


def test_engine_speed_measures_an_onnx_session(tmp_path) -> None:
    _onnx(_mlp(), tmp_path / "m.onnx")
    timing = speed(OnnxModule(onnx_session(tmp_path / "m.onnx")), torch.randn(1, 1, 8, 8), warmup=2, runs=20,
                   throughput_batch=torch.randn(64, 1, 8, 8))
    assert 0 < timing["latency_ms_p50"] <= timing["latency_ms_p95"] < 1000
    assert timing["throughput_per_s"] > 0


def test_masked_pruning_keeps_its_zeros_while_training() -> None:
    """What the pruned variants' fine-tune relies on: with the masks in place, training moves the kept weights and
    leaves the pruned ones at zero; `make_permanent` then gives plain weights with exactly that sparsity."""
    torch.manual_seed(0)
    model = _mlp()
    masked = mask_unstructured(model, 0.7)
    assert sparsity(model) == 0.0  # the model passed in is untouched
    opt = torch.optim.Adam(masked.parameters(), lr=0.05)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    for _ in range(5):
        opt.zero_grad()
        nn.functional.cross_entropy(masked(x), y).backward()
        opt.step()
    pruned = make_permanent(masked)
    assert sparsity(pruned) == pytest.approx(0.7, abs=0.01)
    assert not any(n.endswith("_orig") for n, _ in pruned.named_parameters())
    for (m0, name), (m1, _) in zip(prunable_weights(model), prunable_weights(pruned)):
        kept = getattr(m1, name) != 0
        assert not torch.equal(getattr(m1, name)[kept], getattr(m0, name)[kept])  # the kept weights trained

"""Choosing how a frozen teacher runs: the fastest *exact* execution, measured on the first real batch.

Measured on this project's 2-core CPU (issue 5): a Fashion-MNIST CNN teacher ran ~1.55x faster in `channels_last`
memory format with logits unchanged (max diff 3e-6). Whether it pays depends on the model and the machine, so we time
it rather than assume it: both formats, interleaved, median of a few repeats, and keep channels_last only when it is
faster *and* its logits match the default within 1e-5 (relative to the logits' scale). `torch.compile` is not tried:
on 2 CPU cores its compile time (tens of seconds) exceeds what it saves on runs of a few minutes.

Approximate modes (bf16 autocast) are opt-in (`distill.teacher_precision: bf16`); their fidelity against fp32 on the
first batch (top-1 agreement, mean KL at T=1) is recorded next to the choice.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

EXACT_TOL = 1e-5


def image_tensor(inputs: Any) -> torch.Tensor | None:
    """The 4-D float image tensor of batch inputs (a tensor, or a dict's `inputs`), else None."""
    x = inputs.get("inputs") if isinstance(inputs, dict) else inputs
    return x if isinstance(x, torch.Tensor) and x.ndim == 4 and x.is_floating_point() else None


def with_memory_format(inputs: Any, fmt: torch.memory_format) -> Any:
    """Batch inputs with their image tensor in memory format `fmt` (values unchanged)."""
    if image_tensor(inputs) is None:
        return inputs
    if isinstance(inputs, dict):
        return {**inputs, "inputs": inputs["inputs"].contiguous(memory_format=fmt)}
    return inputs.contiguous(memory_format=fmt)


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (allocator, weight re-layout)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.inference_mode()
def choose_execution(
    model: nn.Module, inputs: Any, *, enabled: bool = True, autocast: torch.dtype | None = None, repeats: int = 3
) -> dict[str, Any]:
    """Pick the memory format for `model` on `inputs` `(B, C, H, W)`; may convert `model` to channels_last in place.

    Returns `{"memory_format", "max_abs_diff", "speedup", "reason"}` (+ bf16 fidelity when `autocast` is set).
    """
    record: dict[str, Any] = {"memory_format": "contiguous", "max_abs_diff": 0.0, "speedup": 1.0}
    conv = any(isinstance(m, (nn.Conv2d, nn.Conv3d)) for m in model.modules())
    if not (enabled and conv and image_tensor(inputs) is not None):
        record["reason"] = "not a conv teacher on 4-D inputs" if enabled else "tuning disabled"
        return _with_fidelity(record, model, inputs, autocast)
    from ..batch import forward_logits

    x = with_memory_format(inputs, torch.contiguous_format)
    x_cl = with_memory_format(inputs, torch.channels_last)
    ref = forward_logits(model, x).float()
    t_default = _time(lambda: forward_logits(model, x), repeats)
    model.to(memory_format=torch.channels_last)
    out = forward_logits(model, x_cl).float()
    t_cl = _time(lambda: forward_logits(model, x_cl), repeats)
    model.to(memory_format=torch.contiguous_format)
    t_default = min(t_default, _time(lambda: forward_logits(model, x), repeats))  # timed before and after: A B A
    diff = float((out - ref).abs().max())
    exact = diff <= EXACT_TOL * max(1.0, float(ref.abs().max()))
    record.update(max_abs_diff=diff, speedup=t_default / max(t_cl, 1e-12))
    if exact and t_cl < 0.97 * t_default:
        model.to(memory_format=torch.channels_last)
        record.update(memory_format="channels_last", reason="faster and exact")
    else:
        model.to(memory_format=torch.contiguous_format)
        record["reason"] = "not exact" if not exact else "not faster"
    return _with_fidelity(record, model, inputs, autocast)


def _with_fidelity(record: dict[str, Any], model: nn.Module, inputs: Any, autocast: torch.dtype | None) -> dict[str, Any]:
    x = image_tensor(inputs) if image_tensor(inputs) is not None else inputs
    if autocast is None or not isinstance(x, torch.Tensor):
        return record
    from ..batch import forward_logits

    device = x.device.type
    ref = forward_logits(model, inputs).float()
    with torch.autocast(device_type=device, dtype=autocast):
        approx = forward_logits(model, inputs).float()
    log_p, log_q = F.log_softmax(ref, -1), F.log_softmax(approx, -1)
    record["autocast"] = str(autocast).replace("torch.", "")
    record["autocast_top1_agreement"] = float((ref.argmax(-1) == approx.argmax(-1)).float().mean())
    record["autocast_kl_T1"] = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    return record

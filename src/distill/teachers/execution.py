"""Choosing how a frozen teacher runs: the fastest *exact* execution, measured on the first real batch.

Measured on this project's 2-core CPU (issue 5): a Fashion-MNIST CNN teacher ran ~1.55x faster in `channels_last`
memory format with logits unchanged (max diff 3e-6); TorchScript's `optimize_for_inference` (mkldnn layouts, conv/BN
folding) was faster still on the bench teacher. Whether each pays depends on the model and the machine, so we time
the candidates rather than assume: eager, channels_last, conv-BN folding + channels_last, TorchScript frozen and
optimised for inference — on copies of the teacher (the user's model is never modified), interleaved, median of a
few repeats — and keep the fastest whose logits match eager within 1e-5 (relative to the logits' scale).
`torch.compile` is not tried: on 2 CPU cores its compile time (tens of seconds) exceeds what it saves on short runs.

Approximate modes (bf16 autocast) are opt-in (`distill.teacher_precision: bf16`); their fidelity against fp32 on the
first batch (top-1 agreement, mean KL at T=1) is recorded next to the choice.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

EXACT_TOL = 1e-5


def image_tensor(inputs: Any) -> torch.Tensor | None:
    """The 4-D float image tensor of batch inputs (a tensor, or a dict's `inputs`), else None."""
    x = inputs.get("inputs") if isinstance(inputs, dict) else inputs
    return x if isinstance(x, torch.Tensor) and x.ndim == 4 and x.is_floating_point() else None


def _head(inputs: Any, n: int) -> Any:
    """The first `n` examples of batch inputs (a tensor or a dict of tensors)."""
    if isinstance(inputs, dict):
        return {k: v[:n] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    return inputs[:n]


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


def _fold_conv_bn(model: nn.Module) -> nn.Module:
    """A copy of `model` with every `Conv2d` directly followed by a `BatchNorm2d` (siblings in order, as in a
    Sequential) folded into one conv (eval-mode statistics): same function, one pass over memory fewer."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model)
    for parent in model.modules():
        if not isinstance(parent, nn.Sequential):
            continue  # only Sequential guarantees the conv's output goes straight into the BN
        kids = list(parent.named_children())
        for (n1, a), (n2, b) in zip(kids, kids[1:]):
            if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d) and b.track_running_stats:
                setattr(parent, n1, fuse_conv_bn_eval(a, b))
                setattr(parent, n2, nn.Identity())
    return model


def _candidates(model: nn.Module, inputs: Any, autocast: torch.dtype | None) -> dict[str, Callable[[Any], torch.Tensor]]:
    """name -> run(inputs) -> logits. Each is built on a copy; the user's teacher is never modified."""
    from ..batch import forward_logits, logits_of

    cl = torch.channels_last
    out: dict[str, Callable[[Any], torch.Tensor]] = {"eager": lambda b: forward_logits(model, b)}
    eager_cl = copy.deepcopy(model).to(memory_format=cl)
    out["channels_last"] = lambda b: forward_logits(eager_cl, with_memory_format(b, cl))
    folded_cl = _fold_conv_bn(model).to(memory_format=cl)
    out["fold_bn+channels_last"] = lambda b: forward_logits(folded_cl, with_memory_format(b, cl))
    plain = not isinstance(inputs, dict) or set(inputs) == {"inputs"}
    if autocast is None and plain:
        try:  # TorchScript freeze + optimize_for_inference: mkldnn layouts and conv/bn folding on CPU
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer and deprecation chatter
                traced = torch.jit.trace(copy.deepcopy(model), image_tensor(inputs), strict=False)
                scripted = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            out["torchscript"] = lambda b: logits_of(scripted(image_tensor(b)))
        except (RuntimeError, TypeError, ValueError, AttributeError):
            pass  # not traceable: the eager candidates remain
    return out


@torch.inference_mode()
def choose_execution(
    model: nn.Module,
    inputs: Any,
    *,
    enabled: bool = True,
    autocast: torch.dtype | None = None,
    repeats: int = 5,
    prefer: str | None = None,
) -> tuple[dict[str, Any], Callable[[Any], torch.Tensor]]:
    """Time the exact candidates for `model` on the batch inputs `inputs` (images `(B, C, H, W)`) and return
    `(record, run)`: `run(inputs) -> logits` is the fastest whose logits match eager within 1e-5 (scaled by the
    logits' magnitude); `record` names it with every candidate's time and max |diff| (and bf16 fidelity)."""
    from ..batch import forward_logits

    eager = lambda b: forward_logits(model, b)  # noqa: E731
    record: dict[str, Any] = {"execution": "eager", "speedup": 1.0}
    conv = any(isinstance(m, (nn.Conv2d, nn.Conv3d)) for m in model.modules())
    if not (enabled and conv and image_tensor(inputs) is not None):
        record["reason"] = "not a conv teacher on 4-D inputs" if enabled else "tuning disabled"
        return _with_fidelity(record, model, inputs, autocast), eager
    ref = forward_logits(model, inputs).float()
    tol = EXACT_TOL * max(1.0, float(ref.abs().max()))
    cands = _candidates(model, inputs, autocast)
    times: dict[str, list[float]] = {k: [] for k in cands}
    # Checked on the batch and on slices of 1 and about half of it: a traced graph that baked in the batch shape or a
    # shape-dependent branch shows up there. (Also warms every candidate up before timing.)
    n = image_tensor(inputs).shape[0]
    checks = [(inputs, ref)] + [(p, forward_logits(model, p).float()) for p in (_head(inputs, 1), _head(inputs, max(1, n // 2 - 1)))]
    diffs = {k: max(float((run(x).float() - r).abs().max()) for x, r in checks) for k, run in cands.items()}
    for _ in range(repeats):  # interleaved rounds, median per candidate
        for k, run in cands.items():
            t0 = time.perf_counter()
            run(inputs)
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    exact = [k for k in cands if diffs[k] <= tol]
    # `prefer`: the execution this run chose before (a resume must replay the same float arithmetic, bit for bit)
    best = prefer if prefer in exact else min(exact, key=lambda k: med[k])
    reason = "recorded choice of this run" if best == prefer else "fastest exact"
    record.update(execution=best, speedup=med["eager"] / max(med[best], 1e-12), reason=reason,
                  candidates={k: {"ms": round(1e3 * med[k], 3), "max_abs_diff": diffs[k]} for k in cands})
    return _with_fidelity(record, model, inputs, autocast), cands[best]


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

"""Choosing how a frozen teacher runs: the fastest *exact* execution, measured on the first real batch.

Candidates, for a conv teacher on 4-D image inputs (issue 5, issue 8):
- `eager`: the model as given (the reference; never copied, never modified);
- `channels_last`, `fold_bn+channels_last`: copies in NHWC memory format, the second with every Conv2d→BatchNorm2d
  pair of a Sequential folded into one conv;
- `compiled`: `torch.compile` (inductor, `freezing=True`: weights become constants, conv/BN folded, mkldnn weight
  prepacking) of a channels_last copy (of the model as given when copies are scarce) for the batch shape of the first
  batch; other shapes (a smaller last batch) run eager, so nothing is
  recompiled during training. Offered only when the run is long enough to repay the compile, in two stages:
  1. estimate, before compiling: `expected_calls x best per-call time >= COMPILE_S_FLOOR` — even a teacher that
     became free could not repay a compile on a shorter run (unknown `expected_calls`: never compiled);
  2. measured, after compiling: `expected_calls x (best per-call time - compiled per-call time) >= compile seconds`
     (the compile just timed); otherwise the compiled candidate is discarded.
  A resume that replays `compiled` compiles again (a warm inductor cache makes that quicker), which is why it must pay.
Whether each pays depends on the model and the machine, so they are timed rather than assumed: each against eager in
interleaved rounds (median of `repeats`), and the fastest whose logits match eager within 1e-5 (relative to the
logits' scale) on two batch sizes — the full batch and about half of it — is kept. No TorchScript: `torch.jit.trace`
is deprecated in the pinned torch, and nothing here silences warnings.

Memory: candidates other than eager hold an extra copy of the weights (compiling with freezing holds them as
constants). With weights <= `max_copy_share` of the available memory (host RAM, or free device memory on CUDA) the
copies are built together and timed interleaved; above that share, one extra copy at a time — each built, checked,
timed and discarded when it loses (the winner is rebuilt if it was not the last one built); when one copy would take
more than half the available memory, no copies: eager only. The winner's copy lives as long as the teacher source.

Approximate modes (bf16 autocast) are opt-in (`distill.teacher_precision: bf16`); their fidelity against fp32 on the
first batch (top-1 agreement, mean KL at T=1) is recorded next to the choice.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..batch import forward_logits, logits_of

EXACT_TOL = 1e-5
MAX_COPY_SHARE = 0.25  # weights above this share of available memory: one extra copy at a time
# The least a compile has taken on this project's 2-core CPU (the bench teacher, 356k params, warm inductor cache:
# 1.5 s; cold: 6-7 s). A lower bound, so stage 1 never skips a compile that could have paid.
COMPILE_S_FLOOR = 1.5

Run = Callable[[Any], torch.Tensor]


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


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers: what one extra copy of it costs."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def available_memory(device: torch.device) -> int | None:
    """Bytes free for a new copy on `device`: free device memory on CUDA, else the host's available RAM (psutil if
    installed, else /proc/meminfo's MemAvailable); None when it cannot be read."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return int(psutil.virtual_memory().available)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    return None


def copy_plan(nbytes: int, available: int | None, max_copy_share: float) -> str:
    """How many extra copies of `nbytes` of weights may exist at once: "together" (all candidates, weights within
    `max_copy_share` of `available`, or `available` unknown), "one_at_a_time", or "none" (a copy would take more
    than half of what is available)."""
    if available is None or nbytes <= max_copy_share * available:
        return "together"
    return "one_at_a_time" if 2 * nbytes <= available else "none"


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


def _channels_last(model: nn.Module, fold: bool) -> Run:
    cl = torch.channels_last
    net = (_fold_conv_bn(model) if fold else copy.deepcopy(model)).to(memory_format=cl)
    return lambda b: forward_logits(net, with_memory_format(b, cl))


def _signature(x: torch.Tensor) -> tuple[Any, ...]:
    return (tuple(x.shape), x.stride(), x.dtype, x.device)


def build_compiled(model: nn.Module, inputs: Any, *, channels_last: bool = True) -> Run:
    """`torch.compile` with inductor freezing, specialised to the image tensor of `inputs` (shape, strides, dtype,
    device) and compiled now (the first call compiles). Inputs of any other signature run eager, so a smaller last
    batch never triggers a recompile. `channels_last`: compile a channels_last copy fed channels_last inputs (on the
    bench teacher, 1 thread: 2.8x eager against 1.7x for the model as given); else the model itself is wrapped, not
    modified, and its frozen constants are the only copy."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = copy.deepcopy(model).to(memory_format=fmt) if channels_last else model
    key = _signature(with_memory_format(image_tensor(inputs), fmt))
    compiled = torch.compile(net, options={"freezing": True}, dynamic=False)

    def run(b: Any) -> torch.Tensor:
        x = image_tensor(b)
        x = with_memory_format(x, fmt) if x is not None else None
        return logits_of(compiled(x)) if x is not None and _signature(x) == key else forward_logits(model, b)

    run(inputs)
    return run


@dataclass(frozen=True)
class Candidate:
    """A way to run the teacher: `build()` makes the runner (holding an extra copy of the weights when `copies`)."""

    name: str
    build: Callable[[], Run]
    copies: bool = True


def candidates(model: nn.Module, inputs: Any) -> list[Candidate]:
    """The copy-based eager candidates, cheapest to build first. (`compiled` is added by `choose_execution` when the
    run is long enough.)"""
    return [Candidate("channels_last", lambda: _channels_last(model, fold=False)),
            Candidate("fold_bn+channels_last", lambda: _channels_last(model, fold=True))]


def median_times(runs: dict[str, Run], inputs: Any, repeats: int) -> dict[str, float]:
    """Seconds per call of each runner on `inputs`: interleaved rounds (A B C, A B C, ...), median per runner."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, run in runs.items():
            t0 = time.perf_counter()
            run(inputs)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def compile_could_pay(expected_calls: int | None, best_s: float, floor_s: float | None = None) -> bool:
    """Stage 1, before compiling: even a compiled teacher that cost nothing per call would save at most `best_s` per
    call, so a run of `expected_calls` calls can repay at most `expected_calls * best_s` seconds of compile; it is
    tried only if that reaches `floor_s`, the least a compile takes. Unknown run length: no."""
    floor_s = COMPILE_S_FLOOR if floor_s is None else floor_s
    return expected_calls is not None and expected_calls * best_s >= floor_s


def compile_pays(expected_calls: int | None, best_s: float, compiled_s: float, compile_s: float) -> bool:
    """Stage 2, measured: the per-call saving over the run covers the compile time."""
    return expected_calls is not None and expected_calls * (best_s - compiled_s) >= compile_s


@torch.inference_mode()
def choose_execution(
    model: nn.Module,
    inputs: Any,
    *,
    enabled: bool = True,
    autocast: torch.dtype | None = None,
    repeats: int = 5,
    prefer: str | None = None,
    expected_calls: int | None = None,
    max_copy_share: float = MAX_COPY_SHARE,
) -> tuple[dict[str, Any], Run]:
    """Time the exact candidates for `model` on the batch inputs `inputs` (images `(B, C, H, W)`) and return
    `(record, run)`: `run(inputs) -> logits` is the fastest whose logits match eager within 1e-5 (scaled by the
    logits' magnitude) on the batch and on about half of it; `record` names it with, per candidate, its time per call
    (`ms`, on the scale of eager's first rounds), speed-up over eager in its own rounds, max |diff| and build seconds;
    plus the copy plan (`memory`), the compile decision (`compile`) and bf16 fidelity when autocast is on.
    `prefer`: the execution this run chose before — rebuilt and used if still exact (a resume replays the same float
    arithmetic, bit for bit). `expected_calls`: how many batches this teacher will serve (None: unknown)."""
    eager: Run = lambda b: forward_logits(model, b)  # noqa: E731
    record: dict[str, Any] = {"execution": "eager", "speedup": 1.0, "expected_calls": expected_calls}
    conv = any(isinstance(m, (nn.Conv2d, nn.Conv3d)) for m in model.modules())
    if not (enabled and conv and image_tensor(inputs) is not None):
        record["reason"] = "not a conv teacher on 4-D inputs" if enabled else "tuning disabled"
        return _with_fidelity(record, model, inputs, autocast), eager
    nbytes, device = weight_bytes(model), image_tensor(inputs).device
    avail = available_memory(device)
    plan = copy_plan(nbytes, avail, max_copy_share)
    record["memory"] = {"weight_bytes": nbytes, "available_bytes": avail, "max_copy_share": max_copy_share, "plan": plan}
    if plan == "none":
        record["reason"] = "teacher too large to copy: eager only"
        return _with_fidelity(record, model, inputs, autocast), eager

    ref = forward_logits(model, inputs).float()
    tol = EXACT_TOL * max(1.0, float(ref.abs().max()))
    n = image_tensor(inputs).shape[0]
    half = _head(inputs, max(1, n // 2 - 1))
    checks = [(inputs, ref), (half, forward_logits(model, half).float())]
    pool = candidates(model, inputs)
    plain = not isinstance(inputs, dict) or set(inputs) == {"inputs"}
    compile_ok = autocast is None and plain
    if compile_ok:
        # with weights above the copy share, compile the model as given: its frozen constants are the one copy
        pool.append(Candidate("compiled", lambda: build_compiled(model, inputs, channels_last=plan == "together")))
    by_name = {c.name: c for c in pool}

    def max_diff(run: Run) -> float:  # also warms the runner up before it is timed
        return max(float((run(x).float() - r).abs().max()) for x, r in checks)

    def build(c: Candidate) -> tuple[Run | None, float, str | None]:
        """(runner, seconds to build, None), or (None, seconds, error) when the model cannot run that way."""
        t0 = time.perf_counter()
        try:
            return c.build(), time.perf_counter() - t0, None
        except (RuntimeError, TypeError, ValueError, AttributeError, NotImplementedError, AssertionError) as e:
            return None, time.perf_counter() - t0, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"

    if prefer in by_name:
        run, _, error = build(by_name[prefer])
        diff = max_diff(run) if run is not None else float("inf")
        if diff <= tol:
            record.update(execution=prefer, reason="recorded choice of this run", candidates={prefer: {"max_abs_diff": diff}})
            return _with_fidelity(record, model, inputs, autocast), run
        record["replay_failed"] = {prefer: error or diff}  # fails or no longer exact: choose afresh
        del run

    results: dict[str, dict[str, Any]] = {"eager": {"max_abs_diff": 0.0}}
    best, best_run, best_s = "eager", eager, 0.0  # best_s: seconds per call, in eager-relative terms (below)
    eager_s: float | None = None

    def duel(cands: list[Candidate], rival: tuple[str, Run] | None = None) -> tuple[dict[str, Run], float | None]:
        """Build `cands`, check them, time them with eager (and `rival`, a runner kept from before, so a saving over
        it is measured in the same rounds); return the exact ones' runners (others discarded) and the rival's
        per-call seconds in these rounds."""
        nonlocal eager_s
        runs: dict[str, Run] = {}
        for c in cands:
            run, build_s, error = build(c)
            if run is None:
                results[c.name] = {"error": error}
                continue  # cannot run this model that way: the others remain
            diff = max_diff(run)
            results[c.name] = {"max_abs_diff": diff, "build_s": round(build_s, 3)}
            if diff <= tol:
                runs[c.name] = run
        med = median_times({"eager": eager, **dict([rival] if rival else []), **runs}, inputs, repeats)
        eager_s = eager_s if eager_s is not None else med["eager"]
        for k in runs:  # one scale for all duels: eager's time in the first rounds / the speed-up in these rounds
            speedup = med["eager"] / max(med[k], 1e-12)
            results[k].update(ms=round(1e3 * eager_s / speedup, 3), speedup=round(speedup, 3), per_call_s=eager_s / speedup)
        results["eager"].setdefault("ms", round(1e3 * eager_s, 3))
        return runs, (eager_s * med[rival[0]] / med["eager"] if rival else None)

    held = "eager"  # whose runner `best_run` is: the one extra copy alive (besides losers not yet collected)
    copy_cands = [c for c in pool if c.name != "compiled"]
    if plan == "together":
        runs, _ = duel(copy_cands)
        for k, run in runs.items():
            if best == "eager" or results[k]["per_call_s"] < best_s:
                best, best_run, best_s, held = k, run, results[k]["per_call_s"], k
        del runs
    else:  # one extra copy at a time: the previous best is let go before the next is built
        for c in copy_cands:
            best_run, held = eager, "eager"
            runs, _ = duel([c])
            if c.name in runs and (best == "eager" or results[c.name]["per_call_s"] < best_s):
                best, best_s = c.name, results[c.name]["per_call_s"]
                best_run, held = runs[c.name], c.name
            del runs
    if best == "eager":
        best_s = eager_s if eager_s is not None else 0.0

    if compile_ok:
        if not compile_could_pay(expected_calls, best_s):
            why = "run length unknown" if expected_calls is None else (
                f"{expected_calls} calls x {1e3 * best_s:.3f} ms per call < {COMPILE_S_FLOOR} s, the least compile")
            record["compile"] = {"tried": False, "reason": why}
        else:
            if plan == "one_at_a_time":
                best_run, held = eager, "eager"  # let the best copy go before compiling (rebuilt below if it wins)
            rival = (best, best_run) if held == best and best != "eager" else None
            runs, rival_s = duel([by_name["compiled"]], rival)
            res = results["compiled"]
            if "compiled" in runs:
                ref_s = rival_s if rival_s is not None else best_s  # the best so far, timed in the same rounds if held
                pays = compile_pays(expected_calls, ref_s, res["per_call_s"], res["build_s"])
                record["compile"] = {"tried": True, "pays": pays, "compile_s": res["build_s"], "versus": best,
                                     "saving_ms_per_call": round(1e3 * (ref_s - res["per_call_s"]), 3)}
                if pays:
                    best, best_s, best_run, held = "compiled", res["per_call_s"], runs["compiled"], "compiled"
            else:
                record["compile"] = {"tried": True, "pays": False, "reason": "failed or not exact"}
            del runs
    if best != held:
        best_run = by_name[best].build()  # built before, so it builds again; its copy was let go while later candidates were tried

    eager_ms = results["eager"]["ms"]
    for r in results.values():
        r.pop("per_call_s", None)
    record.update(execution=best, speedup=eager_ms / max(1e3 * best_s, 1e-9) if best != "eager" else 1.0,
                  reason="fastest exact", candidates=results)
    return _with_fidelity(record, model, inputs, autocast), best_run


def _with_fidelity(record: dict[str, Any], model: nn.Module, inputs: Any, autocast: torch.dtype | None) -> dict[str, Any]:
    x = image_tensor(inputs) if image_tensor(inputs) is not None else inputs
    if autocast is None or not isinstance(x, torch.Tensor):
        return record
    device = x.device.type
    ref = forward_logits(model, inputs).float()
    with torch.autocast(device_type=device, dtype=autocast):
        approx = forward_logits(model, inputs).float()
    log_p, log_q = F.log_softmax(ref, -1), F.log_softmax(approx, -1)
    record["autocast"] = str(autocast).replace("torch.", "")
    record["autocast_top1_agreement"] = float((ref.argmax(-1) == approx.argmax(-1)).float().mean())
    record["autocast_kl_T1"] = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    return record

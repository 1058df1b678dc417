"""The one training loop, on Hugging Face Accelerate.

`fit(method, loader, train_cfg, accelerator=...)` trains whatever `method` owns (student + projectors). The teacher is
a source held outside the module tree: it is moved to the device but never prepared, wrapped or optimised.
A step whose loss or gradient is NaN/Inf is skipped (no update) and counted; too many in a row abort the run.
With `train.grad_accum` k a step is a window of k micro-batches, each weighted by the rows its loss averages over
(`Method.units`), so the update is that of one batch k times as large (see `_fit`).
With a `Checkpointer`, state is saved every `train.checkpoint_every` steps and at the end of the phase, and a resumed
phase continues exactly where its newest complete checkpoint left off (same weights, optimizer, scheduler, RNG
states and data order), or is not retrained at all if it had finished.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from torch.utils.data import DataLoader

from ..batch import batch_size_of, loss_units, to_device
from ..config import TrainConfig
from ..errors import DistillError, DistillWarning
from .checkpoint import Checkpointer, generator_state, restore_rng
from .metrics import MetricsLog


class NonFiniteLossError(DistillError):
    """Raised after `max_nonfinite` consecutive steps with a NaN/Inf loss or gradient."""


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig, lr: float | None = None) -> torch.optim.Optimizer:
    lr = lr or cfg.lr
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up then cosine decay to 0 (or constant) over `total_steps` optimizer steps."""

    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.scheduler == "constant":
            return 1.0
        progress = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def peek(loader: DataLoader) -> Any:
    """One batch without advancing the loader's shuffling generator (the data order must not depend on it)."""
    if isinstance(loader.dataset, torch.utils.data.IterableDataset):
        return next(iter(loader))
    plain = DataLoader(loader.dataset, batch_size=loader.batch_size or 1, collate_fn=loader.collate_fn)
    return next(iter(plain))


def _shuffle_generator(loader: DataLoader) -> torch.Generator | None:
    """The generator that decides the loader's shuffle order (the same object before and after `prepare`)."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    for holder in (loader, getattr(loader, "sampler", None), getattr(batch_sampler, "sampler", None)):
        gen = getattr(holder, "generator", None)
        if isinstance(gen, torch.Generator):
            return gen
    return None


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def fit(
    method: torch.nn.Module,
    loader: DataLoader,
    cfg: TrainConfig,
    *,
    accelerator: Accelerator,
    phase: str,
    epochs: int | None = None,
    lr: float | None = None,
    log: MetricsLog | None = None,
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    progress: bool = True,
    checkpointer: Checkpointer | None = None,
) -> dict[str, Any]:
    """Train `method` (its trainable parameters) for `epochs` epochs over `loader`.

    `evaluate(unwrapped_method)` runs after each epoch; its numbers are logged with `phase` and `epoch`.
    `checkpointer` saves (and, when resuming, restores) checkpoints of this phase.
    Returns a summary: steps, skipped steps, wall time, samples/s.
    """
    epochs = epochs or cfg.epochs
    log = log or MetricsLog(None)
    teacher = getattr(method, "teacher", None)
    if teacher is not None:
        teacher.to(accelerator.device)  # moved, not prepared: no DDP wrapper, no optimizer state
    method.to(accelerator.device)
    formats = _memory_formats(method)
    if cfg.channels_last:  # 4-D (conv) weights to NHWC; conv/BN/pool then run channels_last, same math
        method.to(memory_format=torch.channels_last)
    try:
        return _fit(method, loader, cfg, accelerator=accelerator, phase=phase, epochs=epochs, lr=lr, log=log,
                    evaluate=evaluate, progress=progress, checkpointer=checkpointer)
    finally:  # channels_last is our speed choice, not the caller's: the models leave in the format they came in
        _restore_memory_formats(method, formats)


def _memory_formats(module: torch.nn.Module) -> dict[str, bool]:
    """Which 4-D parameters and buffers are stored channels_last (NHWC) now."""
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return {n: t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
            for n, t in tensors if t.ndim == 4}


def _restore_memory_formats(module: torch.nn.Module, formats: dict[str, bool]) -> None:
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if name in formats:
            fmt = torch.channels_last if formats[name] else torch.contiguous_format
            if not t.is_contiguous(memory_format=fmt):
                t.data = t.data.contiguous(memory_format=fmt)  # same values, same Parameter object


def _fit(
    method: torch.nn.Module,
    loader: DataLoader,
    cfg: TrainConfig,
    *,
    accelerator: Accelerator,
    phase: str,
    epochs: int,
    lr: float | None,
    log: MetricsLog,
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None,
    progress: bool,
    checkpointer: Checkpointer | None,
) -> dict[str, Any]:
    teacher = getattr(method, "teacher", None)
    setup = getattr(method, "setup", None)
    if setup is not None and not getattr(method, "_setup_done", False):
        # shape-dependent submodules (projectors) must exist before the optimizer; forking the RNG keeps the dropout
        # stream after it identical to the student-alone phase's, so the comparison stays paired
        with torch.random.fork_rng(devices=[]):
            num_examples = len(loader.dataset) if hasattr(loader.dataset, "__len__") else None
            setup(to_device(peek(loader), accelerator.device), num_examples=num_examples)
        method._setup_done = True
    resume = checkpointer.resume_point(phase) if checkpointer is not None else None
    if resume is not None:
        method.load_state_dict(resume.model_state())
        log.log({"phase": phase, "step": resume.step, "event": "resumed" if not resume.done else "phase_restored"})
        if resume.done:  # the phase had finished: its weights are all it needs
            return dict(resume.state.get("summary") or {})
    params = [p for p in method.parameters() if p.requires_grad]
    if not params:
        raise DistillError(f"phase {phase!r} has no trainable parameters; check the student model")
    optimizer = make_optimizer(params, cfg, lr)
    model, optimizer, loader = accelerator.prepare(method, optimizer, loader)
    # Steps and schedule count optimizer steps of the (possibly sharded) loader; the scheduler is stepped here once
    # per update, not by Accelerate (which steps it once per process), so N processes at batch B follow the same
    # schedule as one process at batch N*B. With `grad_accum` k an update is a window of k consecutive micro-batches
    # (the last window of an epoch may be shorter), aligned to the epoch's start so a resume lands on a window edge.
    accum = cfg.grad_accum
    micro_per_epoch = len(loader)
    steps_per_epoch = math.ceil(micro_per_epoch / accum)
    total = epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.max_steps, epochs * steps_per_epoch)
    scheduler = make_scheduler(optimizer, cfg, total)
    generator = _shuffle_generator(loader)
    unwrapped = accelerator.unwrap_model(model)

    on_step = getattr(method, "on_step", None)  # methods that follow the run's progress (DKD's warm-up)
    warned = False  # about a method whose accumulated update is not exactly one big batch's
    step, skipped, consecutive, samples, start_epoch, start_batch = 0, 0, 0, 0, 0, 0
    if resume is not None:  # optimizer after scheduler: creating a scheduler rewrites the param groups' lr
        optimizer.load_state_dict(resume.optimizer_state())
        scheduler.load_state_dict(resume.state["scheduler"])
        step, start_epoch, start_batch = resume.step, int(resume.state["epoch"]), int(resume.state["batch"])
        skipped, consecutive, samples = (int(resume.state.get(k, 0)) for k in ("skipped", "consecutive", "samples"))
        restore_rng(resume, accelerator.process_index)
    started = time.perf_counter()
    with _progress(progress and accelerator.is_main_process) as bar:
        task = bar.add_task(phase, total=total, status="")
        bar.update(task, completed=step)
        for epoch in range(start_epoch, epochs):
            model.train()
            if hasattr(loader, "set_epoch"):  # Accelerate's loader forwards its epoch to the dataset on iteration
                loader.set_epoch(epoch)  # augment.Augmented: epoch e uses view e % K
            elif hasattr(getattr(loader, "dataset", None), "set_epoch"):
                loader.dataset.set_epoch(epoch)
            teacher_model = getattr(teacher, "model", None)
            if teacher_model is not None:
                teacher_model.eval()
            if generator is not None and resume is not None and epoch == start_epoch and resume.state.get("generator"):
                generator.set_state(generator_state(resume))  # re-create this epoch's shuffle order
            epoch_order = generator.get_state() if generator is not None else None
            finite, units, ref, sums = True, 0, 0, {}
            for index, batch in enumerate(loader):
                if epoch == start_epoch and index < start_batch:
                    continue  # trained before the checkpoint
                first = index % accum == 0
                last = index % accum == accum - 1 or index == micro_per_epoch - 1
                if first:
                    if on_step is not None:
                        on_step(step - skipped, total)  # optimizer updates so far: skipped steps do not count
                    finite, units, ref, sums = True, 0, 0, {}
                # micro-batches before the window's last accumulate locally: no DDP gradient all-reduce for them
                with contextlib.nullcontext() if last else accelerator.no_sync(model):
                    out = model(batch)
                    loss = out["loss"]
                    finite = finite and _all_finite(loss.detach(), accelerator)
                    if finite and accum == 1:
                        accelerator.backward(loss)
                    elif finite:
                        # weighted by its share of the window's rows (`Method.units`: labelled tokens, or examples):
                        # gradients of loss * n / ref are summed here and scaled by ref / (the window's rows) before
                        # the update; ref (the first micro-batch's rows) keeps the scaled loss near 1 for fp16
                        prepared, unwrapped.last_batch = getattr(unwrapped, "last_batch", None), None
                        n = _units(unwrapped, prepared, batch)
                        if not ref:  # one scale on every process, so their summed gradients stay comparable
                            ref = _max_over_processes(max(n, 1), accelerator)
                        if not warned:
                            warned = _warn_if_inexact(unwrapped, prepared, phase, accum)
                        accelerator.backward(loss * (n / ref))
                        units += n
                        for k, v in out.items():
                            if v.ndim == 0:
                                sums[k] = sums.get(k, 0.0) + v.detach().float() * n
                samples += batch_size_of(batch)
                if not last:
                    continue
                if finite and accum > 1:
                    # DDP averaged the processes' sums of (n / ref)-weighted gradients: times ref * P / (all rows)
                    rows = units if accelerator.num_processes == 1 else _sum_over_processes(units, accelerator)
                    scale = ref * accelerator.num_processes / max(rows, 1)  # no rows at all: every term was 0
                    for p in params:
                        if p.grad is not None:
                            p.grad.mul_(scale)
                if not finite:
                    ok = False
                else:
                    max_norm = cfg.grad_clip if cfg.grad_clip is not None else float("inf")
                    grad_norm = accelerator.clip_grad_norm_(params, max_norm)
                    if getattr(accelerator, "scaler", None) is not None:
                        # fp16 loss scaling: the GradScaler must see every step (it skips inf gradients itself and
                        # lowers its scale); bypassing it would leave the gradients unscaled-but-not-stepped.
                        optimizer.step()
                        ok = not getattr(optimizer, "step_was_skipped", False)
                    else:
                        ok = grad_norm is None or bool(torch.isfinite(torch.as_tensor(grad_norm)))
                        if ok:
                            optimizer.step()
                if ok:
                    scheduler.step()
                    consecutive = 0
                else:
                    skipped += 1
                    consecutive += 1
                    log.log({"phase": phase, "step": step, "event": "nonfinite_skip"})
                    if consecutive >= cfg.max_nonfinite:
                        raise NonFiniteLossError(
                            f"{phase}: {consecutive} consecutive steps had a NaN/Inf loss or gradient; "
                            "lower train.lr, set train.grad_clip, or use train.mixed_precision=no"
                        )
                optimizer.zero_grad(set_to_none=True)
                step += 1
                if step % cfg.log_every == 0 or step == total:
                    record = {"phase": phase, "step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0]}
                    if accum > 1 and not finite:  # a skipped window: its partial means would look like a result
                        scalars = {k: torch.tensor(float("nan")) for k, v in out.items() if v.ndim == 0}
                    elif accum > 1 and units:  # the window's means, each micro-batch weighted by its rows
                        scalars = {k: v / units for k, v in sums.items()}
                    else:
                        scalars = {k: v.detach().float() for k, v in out.items() if v.ndim == 0}
                    if accelerator.num_processes > 1:  # the mean over all processes, not the main one's share
                        scalars = {k: accelerator.reduce(v.to(accelerator.device), reduction="mean")
                                   for k, v in scalars.items()}
                    record.update({k: float(v) for k, v in scalars.items()})
                    log.log(record)
                    bar.update(task, status=f"loss {record.get('loss', float('nan')):.4f}")
                bar.advance(task)
                if checkpointer is not None and checkpointer.due(step) and step < total and consecutive == 0:
                    checkpointer.save(
                        phase=phase, step=step, done=False, model=accelerator.unwrap_model(model),
                        optimizer=optimizer, scheduler=scheduler,
                        position={"epoch": epoch, "batch": index + 1, "generator": epoch_order},
                        extra={"skipped": skipped, "consecutive": consecutive, "samples": samples},
                    )
                if step >= total:
                    break
            if evaluate is not None:
                scores = evaluate(accelerator.unwrap_model(model))
                log.log({"phase": phase, "step": step, "epoch": epoch, **{f"val_{k}": v for k, v in scores.items()}})
                bar.update(task, status=" ".join(f"val_{k} {v:.4f}" for k, v in scores.items()))
            if step >= total:
                break
    wall = time.perf_counter() - started
    accelerator.wait_for_everyone()
    summary = {"steps": step, "skipped_steps": skipped, "wall_s": wall, "samples_per_s": samples / max(wall, 1e-9)}
    if checkpointer is not None:
        checkpointer.save(phase=phase, step=step, done=True, model=accelerator.unwrap_model(model), optimizer=optimizer,
                          scheduler=scheduler, position={"epoch": epochs, "batch": 0}, extra={"summary": summary})
    return summary


def _units(method: torch.nn.Module, prepared: Any, batch: Any) -> int:
    """The rows the method's loss on its latest batch averaged over: `Method.units` of the batch its pre-hook
    prepared, or `batch.loss_units` of the raw batch for a plain module."""
    units = getattr(method, "units", None)
    return int(units(prepared)) if prepared is not None and callable(units) else loss_units(batch)


def _warn_if_inexact(method: torch.nn.Module, prepared: Any, phase: str, accum: int) -> bool:
    """Warn once per phase when the method says its accumulated update is not exactly one big batch's."""
    note = getattr(method, "accumulation_note", None)
    reason = note(prepared) if callable(note) and prepared is not None else None
    if reason:
        warnings.warn(DistillWarning(
            f"{phase}: train.grad_accum={accum} gives close to, not exactly, the update of one batch {accum}x as large: "
            f"{type(method).__name__.lower()} {reason}"), stacklevel=2)
    return True


def _max_over_processes(value: int, accelerator: Accelerator) -> int:
    if accelerator.num_processes == 1:
        return value
    return int(accelerator.gather(torch.tensor([value], device=accelerator.device)).max())


def _sum_over_processes(value: int, accelerator: Accelerator) -> int:
    return int(accelerator.reduce(torch.tensor([value], device=accelerator.device), reduction="sum").sum())


def _all_finite(loss: torch.Tensor, accelerator: Accelerator) -> bool:
    """Is the loss finite on every process? (All must agree to skip, or DDP's gradient all-reduce would hang.)"""
    finite = torch.isfinite(loss).reshape(1).float()
    if accelerator.num_processes > 1:
        finite = accelerator.reduce(finite, reduction="sum") / accelerator.num_processes
    return bool(finite.item() == 1.0)

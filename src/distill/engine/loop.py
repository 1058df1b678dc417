"""The one training loop, on Hugging Face Accelerate.

`fit(method, loader, train_cfg, accelerator=...)` trains whatever `method` owns (student + projectors). The teacher is
a source held outside the module tree: it is moved to the device but never prepared, wrapped or optimised.
A step whose loss or gradient is NaN/Inf is skipped (no update) and counted; too many in a row abort the run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.utils.data import DataLoader

from ..batch import batch_size_of, to_device
from ..config import TrainConfig
from ..errors import DistillError
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


def _peek(loader: DataLoader) -> Any:
    """One batch without advancing the loader's shuffling generator (the data order must not depend on it)."""
    if isinstance(loader.dataset, torch.utils.data.IterableDataset):
        return next(iter(loader))
    plain = DataLoader(loader.dataset, batch_size=loader.batch_size or 1, collate_fn=loader.collate_fn)
    return next(iter(plain))


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
) -> dict[str, Any]:
    """Train `method` (its trainable parameters) for `epochs` epochs over `loader`.

    `evaluate(unwrapped_method)` runs after each epoch; its numbers are logged with `phase` and `epoch`.
    Returns a summary: steps, skipped steps, wall time, samples/s.
    """
    epochs = epochs or cfg.epochs
    log = log or MetricsLog(None)
    teacher = getattr(method, "teacher", None)
    if teacher is not None:
        teacher.to(accelerator.device)  # moved, not prepared: no DDP wrapper, no optimizer state
    method.to(accelerator.device)
    if cfg.channels_last:  # 4-D (conv) weights to NHWC; conv/BN/pool then run channels_last, same math
        method.to(memory_format=torch.channels_last)
    setup = getattr(method, "setup", None)
    if setup is not None:  # shape-dependent submodules (projectors) must exist before the optimizer
        setup(to_device(_peek(loader), accelerator.device))
    params = [p for p in method.parameters() if p.requires_grad]
    if not params:
        raise DistillError(f"phase {phase!r} has no trainable parameters; check the student model")
    optimizer = make_optimizer(params, cfg, lr)
    steps_per_epoch = len(loader)
    total = epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.max_steps, epochs * steps_per_epoch)
    scheduler = make_scheduler(optimizer, cfg, total)
    model, optimizer, loader, scheduler = accelerator.prepare(method, optimizer, loader, scheduler)

    step, skipped, consecutive, samples = 0, 0, 0, 0
    started = time.perf_counter()
    with _progress(progress and accelerator.is_main_process) as bar:
        task = bar.add_task(phase, total=total, status="")
        for epoch in range(epochs):
            model.train()
            if hasattr(getattr(loader, "dataset", None), "set_epoch"):
                loader.dataset.set_epoch(epoch)  # augment.Augmented: epoch e uses view e % K
            teacher_model = getattr(teacher, "model", None)
            if teacher_model is not None:
                teacher_model.eval()
            for batch in loader:
                out = model(batch)
                loss = out["loss"]
                if not torch.isfinite(loss.detach()):
                    ok = False
                else:
                    accelerator.backward(loss)
                    max_norm = cfg.grad_clip if cfg.grad_clip is not None else float("inf")
                    grad_norm = accelerator.clip_grad_norm_(params, max_norm)
                    ok = grad_norm is None or bool(torch.isfinite(torch.as_tensor(grad_norm)))
                if ok:
                    optimizer.step()
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
                samples += batch_size_of(batch)
                if step % cfg.log_every == 0 or step == total:
                    record = {"phase": phase, "step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0]}
                    record.update({k: float(v.detach()) for k, v in out.items() if v.ndim == 0})
                    log.log(record)
                    bar.update(task, status=f"loss {float(loss.detach()):.4f}")
                bar.advance(task)
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
    return {"steps": step, "skipped_steps": skipped, "wall_s": wall, "samples_per_s": samples / max(wall, 1e-9)}

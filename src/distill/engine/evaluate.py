"""Evaluation: predictions, classification metrics against labels *and* against the teacher, size and speed.

All numbers the report shows are computed here and written to `report.json`; the report never runs a model.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..batch import forward_logits, inputs_of, is_causal_lm, labels_of, next_token_batch, to_device, token_mask
from ..losses import IGNORE_INDEX
from .io import state_bytes


@torch.inference_mode()
def predict(model: nn.Module, loader: DataLoader, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits `(N, C)` float32 and labels `(N,)` (-100 where unlabelled) on CPU, model in eval mode (mode restored)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    all_logits, all_labels = [], []
    try:
        for batch in loader:
            batch = to_device(batch, device)
            logits = forward_logits(model, inputs_of(batch)).float().cpu()
            labels = labels_of(batch)
            all_logits.append(logits)
            all_labels.append(
                labels.cpu() if labels is not None else torch.full((logits.shape[0],), IGNORE_INDEX, dtype=torch.long)
            )
    finally:
        model.train(was_training)
    return torch.cat(all_logits), torch.cat(all_labels)


def accuracy(model: nn.Module, loader: DataLoader, device: torch.device | None = None) -> float:
    """Top-1 accuracy of `model` on the labelled rows of `loader` (per-epoch validation)."""
    logits, labels = predict(model, loader, device)
    labelled = labels != IGNORE_INDEX
    return float((logits[labelled].argmax(-1) == labels[labelled]).float().mean()) if bool(labelled.any()) else 0.0


def student_validation(loader: DataLoader | None, device: torch.device) -> Callable[[nn.Module], dict[str, float]] | None:
    """The per-epoch validation both surfaces use: `evaluate(method) -> {"accuracy": ...}` of the method's student
    on `loader` (the teacher is not run; a causal LM's next-token accuracy and `nll`), or None without a loader."""
    if loader is None:
        return None

    def validate(method: nn.Module) -> dict[str, float]:
        if is_causal_lm(method.student):  # next-token accuracy and NLL over real targets
            scores = lm_metrics(method.student, loader, device)
            return {"accuracy": scores["accuracy"], "nll": scores["nll"]}
        return {"accuracy": accuracy(method.student, loader, device)}

    return validate


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> dict[str, Any]:
    """Expected calibration error (equal-width confidence bins, Guo et al. 2017) and the per-bin table."""
    conf, pred = probs.max(-1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    table = {"bin_lower": [], "bin_upper": [], "confidence": [], "accuracy": [], "count": []}
    ece = 0.0
    n = max(1, len(labels))
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        count = int(in_bin.sum())
        acc = float(correct[in_bin].mean()) if count else 0.0
        avg_conf = float(conf[in_bin].mean()) if count else 0.0
        ece += count / n * abs(acc - avg_conf)
        for key, val in zip(table, (float(lo), float(hi), avg_conf, acc, count)):
            table[key].append(val)
    return {"ece": ece, "table": table}


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None = None
) -> dict[str, Any]:
    """accuracy, nll, ece (+ reliability table), and when a teacher is given: agreement (top-1) and kl_to_teacher.

    `kl_to_teacher` is mean over examples of KL(softmax(teacher) || softmax(model)) at T = 1, in nats.
    Rows labelled -100 count for teacher metrics but not for label metrics.
    """
    logits = logits.float()
    labelled = labels != IGNORE_INDEX
    out: dict[str, Any] = {}
    if bool(labelled.any()):
        lg, lb = logits[labelled], labels[labelled]
        out["accuracy"] = float((lg.argmax(-1) == lb).float().mean())
        out["nll"] = float(F.cross_entropy(lg, lb))
        rel = reliability(lg.softmax(-1), lb)
        out["ece"] = rel["ece"]
        out["reliability"] = rel["table"]
    if teacher_logits is not None:
        t = teacher_logits.float()
        out["agreement"] = float((logits.argmax(-1) == t.argmax(-1)).float().mean())
        log_p, log_q = t.log_softmax(-1), logits.log_softmax(-1)
        out["kl_to_teacher"] = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    return out


@torch.inference_mode()
def lm_metrics(model: nn.Module, loader: DataLoader, device: torch.device | None = None,
               teacher: nn.Module | None = None) -> dict[str, float]:
    """Next-token metrics of a causal LM over the real target tokens of `loader` (position t scored against token
    t+1; prompt tokens (-100) and padding never count), streamed batch by batch (no logits are kept):
    `nll` (nats/token), `perplexity`, `accuracy` (top-1 = the next token), `tokens`, and with a `teacher`:
    `agreement` (same top-1), `kl_to_teacher` (KL(teacher ‖ model) per token at T = 1) and `teacher_nll`."""
    device = device or next(model.parameters()).device
    models = [m for m in (model, teacher) if m is not None]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    sums = {"nll": 0.0, "correct": 0.0, "agree": 0.0, "kl": 0.0, "teacher_nll": 0.0}
    count = 0
    try:
        for batch in loader:
            batch = next_token_batch(to_device(batch, device))
            logits = forward_logits(model, inputs_of(batch)).float()
            mask = token_mask(batch, logits)
            labels = labels_of(batch)
            keep = (labels != IGNORE_INDEX) if mask is None else mask & (labels != IGNORE_INDEX)
            s, y = logits[keep], labels[keep].long()
            count += int(y.numel())
            sums["nll"] += float(F.cross_entropy(s, y, reduction="sum"))
            sums["correct"] += float((s.argmax(-1) == y).sum())
            if teacher is not None:
                t = forward_logits(teacher, inputs_of(batch)).float()[keep]
                log_p, log_q = t.log_softmax(-1), s.log_softmax(-1)
                sums["kl"] += float((log_p.exp() * (log_p - log_q)).sum())
                sums["agree"] += float((s.argmax(-1) == t.argmax(-1)).sum())
                sums["teacher_nll"] += float(F.cross_entropy(t, y, reduction="sum"))
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    n = max(count, 1)
    out = {"nll": sums["nll"] / n, "perplexity": float(np.exp(sums["nll"] / n)), "accuracy": sums["correct"] / n,
           "tokens": float(count)}
    if teacher is not None:
        out.update(agreement=sums["agree"] / n, kl_to_teacher=sums["kl"] / n, teacher_nll=sums["teacher_nll"] / n)
    return out


def timed_runs(fn: Callable[[], Any], runs: int) -> list[float]:
    """Wall seconds of `runs` calls of `fn` (no warm-up: callers warm up as they need)."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


@torch.inference_mode()
def speed(
    model: nn.Module,
    example: Any,
    *,
    threads: int = 1,
    warmup: int = 20,
    runs: int = 200,
    throughput_batch: Any | None = None,
) -> dict[str, float]:
    """Latency at batch 1 (p50/p95 in ms over `runs` timed calls after `warmup`) and throughput (examples/s) on
    `throughput_batch`, CPU, with `torch.set_num_threads(threads)` for the measurement (restored afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    was_training = model.training
    model.eval()
    try:
        call = lambda x: forward_logits(model, x)  # noqa: E731
        for _ in range(warmup):
            call(example)
        times = np.array(timed_runs(lambda: call(example), runs)) * 1000.0
        out = {"latency_ms_p50": float(np.percentile(times, 50)), "latency_ms_p95": float(np.percentile(times, 95))}
        if throughput_batch is not None:
            n = _first_dim(throughput_batch)
            call(throughput_batch)
            reps = max(3, min(20, runs // 10))
            t = statistics.median(timed_runs(lambda: call(throughput_batch), reps))
            out["throughput_per_s"] = n / t
    finally:
        torch.set_num_threads(previous)
        model.train(was_training)
    return out


def _first_dim(x: Any) -> int:
    if isinstance(x, dict):
        x = x["inputs"] if "inputs" in x else next(iter(x.values()))
    return int(x.shape[0])


def model_size(model: nn.Module) -> dict[str, int]:
    """`params` (count) and `size_bytes` (its safetensors serialisation)."""
    return {"params": sum(p.numel() for p in model.parameters()), "size_bytes": len(state_bytes(model))}


def probe_log_probs(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor) -> torch.Tensor:
    """A logistic-regression probe on frozen features: fitted (standardised features, L2, lbfgs) on the labelled rows
    of `train_x`, it returns log-probabilities `(N_test, C)` for `test_x`, to be scored as logits."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labelled = train_y != IGNORE_INDEX
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(train_x[labelled].double().numpy(), train_y[labelled].numpy())
    log_p = torch.from_numpy(probe.predict_log_proba(test_x.double().numpy())).float()
    out = torch.full((len(test_x), int(train_y[labelled].max()) + 1), -1e4)  # classes the probe never saw: ~0 mass
    out[:, torch.as_tensor(probe.classes_)] = log_p
    return out


def embedding_metrics(embeddings: torch.Tensor, teacher_embeddings: torch.Tensor) -> dict[str, float]:
    """`cosine_to_teacher`: mean over examples of cos(model embedding, teacher embedding); `mse_to_teacher`: mean
    squared difference per dimension."""
    e, t = embeddings.float(), teacher_embeddings.float()
    return {"cosine_to_teacher": float(F.cosine_similarity(e, t, dim=-1).mean()),
            "mse_to_teacher": float(((e - t) ** 2).mean())}

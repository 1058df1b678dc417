"""Teacher diagnostics: what the teacher's soft targets look like *before* training on them (pure measurement).

Hinton et al. 2015 soften the teacher with a temperature T, `p = softmax(z_t / T)`. Whether that leaves any "dark
knowledge" depends on the scale of the teacher's logits: a teacher trained long with cross-entropy often has logits of
±50 or more, and at T = 2..8 its targets are then one-hot (top-1 probability > 0.999), so KD degenerates into training
on the teacher's hard labels at a distorted scale; at a very high T they become near-uniform and carry nothing. Logit
standardisation (Sun et al. 2024, `distill.options.standardize`) divides each row by its std first, which makes the
targets' softness independent of the teacher's scale.

On a sample of the transfer set this measures: the logit scale (mean row std, mean row max−min), the teacher's accuracy
where labels exist, and at each candidate T the mean entropy of the softened targets and the share of one-hot rows,
for the raw logits and the standardised ones; plus one-line warnings when the chosen settings leave the targets
one-hot or near-uniform, and `auto_temperature`, the T that `distill.temperature: auto` resolves to.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .batch import collate_fn_of, forward_logits, inputs_of, labels_of, to_device
from .losses import IGNORE_INDEX, standardize_logits

ONE_HOT_P = 0.999  # a softened row whose top-1 probability exceeds this is "effectively one-hot"
ONE_HOT_WARN = 0.5  # warn when more than this share of rows is one-hot at the chosen T
UNIFORM_WARN = 0.9  # warn when the mean entropy exceeds this fraction of log(C) at the chosen T
AUTO_ONE_HOT = 0.05  # temperature: auto -> the smallest T leaving at most this share of rows one-hot ...
AUTO_MAX_ENTROPY = 0.75  # ... and a mean entropy of at most this fraction of log(C)
AUTO_GRID = [2 ** (k / 2) for k in range(0, 11)]  # 1 .. 32, geometric


def softened_stats(logits: torch.Tensor, temperature: float) -> tuple[float, float]:
    """`(mean entropy in nats, share of rows with top-1 probability > 0.999)` of `softmax(logits / T)`.

    `logits` `(N, C)`, any scale; computed in float64 so a one-hot row reads exactly 0 entropy, not NaN."""
    z = logits.double() / temperature  # (N, C)
    log_p = torch.log_softmax(z, dim=-1)
    p = log_p.exp()
    entropy = -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(-1)  # (N,)
    one_hot = (p.max(-1).values > ONE_HOT_P).double()  # (N,)
    return float(entropy.mean()), float(one_hot.mean())


def logit_scale(logits: torch.Tensor) -> dict[str, float]:
    """Mean per-row std (unbiased, over classes) and mean per-row max−min of `(N, C)` logits, plus the extremes."""
    z = logits.double()
    return {
        "logit_std": float(z.std(dim=-1).mean()),
        "logit_range": float((z.max(-1).values - z.min(-1).values).mean()),
        "logit_min": float(z.min()),
        "logit_max": float(z.max()),
    }


def auto_temperature(logits: torch.Tensor, *, standardize: bool = False) -> float:
    """The T that `distill.temperature: auto` resolves to: the smallest T on a geometric grid 1, 1.41, 2, ..., 32 at
    which at most 5% of the teacher's softened rows are one-hot and the mean entropy stays under 75% of log(C)
    (informative, not flat); if no T satisfies both, the smallest with at most 5% one-hot; else 32.
    `logits` `(N, C)`; with `standardize` the rows are standardised first, as the kd loss does."""
    z = standardize_logits(logits) if standardize else logits.float()
    ceiling = AUTO_MAX_ENTROPY * math.log(z.shape[-1])
    stats = [(t, *softened_stats(z, t)) for t in AUTO_GRID]
    for t, entropy, one_hot in stats:
        if one_hot <= AUTO_ONE_HOT and entropy <= ceiling:
            return round(t, 3)
    for t, _, one_hot in stats:
        if one_hot <= AUTO_ONE_HOT:
            return round(t, 3)
    return AUTO_GRID[-1]


def diagnose_logits(
    logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperatures: list[float],
    temperature: float,
    standardize: bool = False,
    alpha: float | None = None,
) -> dict[str, Any]:
    """Diagnostics of teacher `logits` `(N, C)` (and `labels` `(N,)`, -100 = unlabelled) for the chosen
    `temperature` / `standardize`; a JSON-able dict with `warnings` (one line each). See the module docstring."""
    n, c = logits.shape
    temps = sorted({float(t) for t in temperatures} | {float(temperature)})
    std = standardize_logits(logits)
    rows = []
    for t in temps:
        entropy, one_hot = softened_stats(logits, t)
        s_entropy, s_one_hot = softened_stats(std, t)
        rows.append({"temperature": t, "entropy": entropy, "one_hot_share": one_hot,
                     "standardized_entropy": s_entropy, "standardized_one_hot_share": s_one_hot})
    accuracy, labelled = None, 0
    if labels is not None:
        keep = labels != IGNORE_INDEX
        labelled = int(keep.sum())
        if labelled:
            accuracy = float((logits.argmax(-1)[keep] == labels[keep]).double().mean())
    chosen = next(r for r in rows if r["temperature"] == float(temperature))
    out: dict[str, Any] = {
        "sample": n, "num_classes": c, **logit_scale(logits), "accuracy": accuracy, "labelled": labelled,
        "temperature": float(temperature), "standardize": bool(standardize), "max_entropy": math.log(c),
        "chosen_entropy": chosen["standardized_entropy" if standardize else "entropy"],
        "chosen_one_hot_share": chosen["standardized_one_hot_share" if standardize else "one_hot_share"],
        "auto_temperature": auto_temperature(logits, standardize=standardize),
        "per_temperature": rows,
    }
    out["warnings"] = diagnostic_warnings(out, alpha=alpha)
    return out


def diagnostic_warnings(d: dict[str, Any], *, alpha: float | None = None) -> list[str]:
    """One-line warnings (what was measured, what to change) for a `diagnose_logits` result."""
    if alpha == 0.0:  # no soft term: the targets' shape does not matter
        return []
    t, share, entropy = d["temperature"], d["chosen_one_hot_share"], d["chosen_entropy"]
    where = "standardised " if d["standardize"] else ""
    out = []
    if share > ONE_HOT_WARN:
        # with two classes a standardised row is always (+0.71, -0.71): it would carry no confidence at all
        fix = (f"raise distill.temperature (auto would pick {d['auto_temperature']:g})"
               if d["standardize"] or d["num_classes"] == 2 else
               "set distill.options.standardize=true (or distill.temperature=auto)")
        out.append(
            f"soft targets are one-hot: at T={t:g} the {where}teacher's top-1 probability exceeds {ONE_HOT_P} on "
            f"{100 * share:.0f}% of {d['sample']} sampled rows (teacher logit row std {d['logit_std']:.1f}, "
            f"max-min {d['logit_range']:.1f}), so KD only relabels; {fix}"
        )
    # near-uniform matters for raw logits: the student must then blow its own logits up to T times the teacher's
    # relations. Standardised targets are flat at T >= 2 by construction and still work (both sides are standardised).
    if not d["standardize"] and entropy > UNIFORM_WARN * d["max_entropy"]:
        out.append(
            f"soft targets are near-uniform: at T={t:g} the {where}teacher's mean entropy is {entropy:.2f} nats, "
            f"{100 * entropy / d['max_entropy']:.0f}% of the maximum log({d['num_classes']}); lower "
            f"distill.temperature (auto would pick {d['auto_temperature']:g})"
        )
    if d["accuracy"] is not None and d["accuracy"] < 1.5 / d["num_classes"]:
        out.append(
            f"the teacher is near chance: {100 * d['accuracy']:.1f}% accuracy on {d['labelled']} labelled sampled rows "
            f"({d['num_classes']} classes); check teacher.weights and that the data is scaled as the teacher expects"
        )
    return out


def sample_logits(
    teacher: nn.Module, dataset: Dataset, *, sample: int = 512, batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Teacher logits `(N, C)` float32 and labels `(N,)` (or None) on the first `sample` examples of `dataset`
    (an evenly spaced subset, so a class-sorted dataset is still covered). Eval mode; the model is left as found."""
    n = min(sample, len(dataset))  # type: ignore[arg-type]
    idx = torch.linspace(0, len(dataset) - 1, n).round().long().unique().tolist()  # type: ignore[arg-type]
    subset = torch.utils.data.Subset(dataset, idx)
    was_training = teacher.training
    teacher.eval()
    logits, labels, have_labels = [], [], True
    try:
        with torch.inference_mode():
            for batch in DataLoader(subset, batch_size=batch_size, collate_fn=collate_fn_of(dataset)):
                batch = to_device(batch, torch.device(device))
                logits.append(forward_logits(teacher, inputs_of(batch)).float().cpu())
                y = labels_of(batch)
                have_labels = have_labels and y is not None
                if y is not None:
                    labels.append(y.reshape(-1).cpu())
    finally:
        teacher.train(was_training)
    z = torch.cat(logits).reshape(-1, logits[0].shape[-1])
    return z, (torch.cat(labels) if have_labels and labels else None)


def diagnose_teacher(
    teacher: nn.Module, dataset: Dataset, *, temperatures: list[float], temperature: float,
    standardize: bool = False, alpha: float | None = None, sample: int = 512, batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """`diagnose_logits` on the teacher's outputs for an evenly spaced sample of `dataset` (the transfer set)."""
    logits, labels = sample_logits(teacher, dataset, sample=sample, batch_size=batch_size, device=device)
    if labels is not None and labels.shape[0] != logits.shape[0]:  # sequence models: one label per token
        labels = None
    return diagnose_logits(logits, labels, temperatures=temperatures, temperature=temperature,
                           standardize=standardize, alpha=alpha)


def recipe_diagnostics(teacher: nn.Module, recipe: Any, dataset: Dataset, *, device: torch.device | str = "cpu",
                       sample: int = 512) -> dict[str, Any]:
    """Diagnostics for a recipe's settings (`distill.temperature`, `distill.options.standardize`, `distill.alpha`,
    candidate Ts from `eval.temperatures`) on its transfer set `dataset`. With `temperature: auto` the chosen T is
    the derived one (`auto_temperature`), and `temperature_auto` is True."""
    d = recipe.distill
    standardize = bool(d.options.get("standardize", False)) if isinstance(d.options, dict) else False
    logits, labels = sample_logits(teacher, dataset, sample=sample, batch_size=recipe.data.eval_batch_size,
                                   device=device)
    if labels is not None and labels.shape[0] != logits.shape[0]:
        labels = None
    auto = d.temperature == "auto"
    t = auto_temperature(logits, standardize=standardize) if auto else float(d.temperature)
    out = diagnose_logits(logits, labels, temperatures=list(recipe.eval.temperatures), temperature=t,
                          standardize=standardize, alpha=d.alpha)
    out["temperature_auto"] = auto
    return out

"""Logit-level distillation losses: pure tensor functions, float32 math, no modules.

Shapes: logits are `(..., C)` — `(B, C)` for classifiers, `(B, T, V)` for language models. A "row" is one position
of the leading dimensions; `mask` (same leading shape, bool) keeps rows, and losses average over kept rows.

Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network":
    loss = alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE(softmax(z_s), y)
The teacher distribution is the KL's *target* p (first argument); the student is q. T^2 keeps the soft-gradient
magnitude independent of T (d/dz_s of the soft term scales as 1/T^2 for large T). The hard term uses the
un-tempered student (T = 1): it is the ordinary training loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..batch import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "binary_hard_loss", "binary_kd_loss", "dkd_loss", "dkd_parts", "hard_loss", "hinton_loss",
           "kd_loss", "standardize_logits"]


def _check(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "differ in shape; teacher and student must predict the same classes"
        )


def mean_rows(per_row: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Average a per-row loss `(...)` over rows kept by `mask`; 0 (with a graph) when no row is kept. Shared by the
    package's loss modules (not exported)."""
    if mask is None:
        return per_row.mean()
    mask = mask.to(per_row.device, torch.bool)
    kept = mask.sum()
    return torch.where(mask, per_row, torch.zeros_like(per_row)).sum() / kept.clamp(min=1)


def plogp_ratio(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """`p * (log p - log q)` elementwise with the convention 0 * log 0 = 0 (a logit of -inf is allowed on either
    side: the logs are masked *before* the product, so the backward never forms 0 · (−inf) = NaN). Shared by the
    package's loss modules (not exported)."""
    p = log_p.exp()
    keep = p > 0
    return p * (torch.where(keep, log_p, 0.0) - torch.where(keep, log_q, 0.0))


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft-target loss `T^2 * mean_rows KL(softmax(teacher/T) || softmax(student/T))`.

    KL is summed over classes and averaged over rows ("batchmean"), never averaged over classes.
    Args: logits `(..., C)`; `mask` `(...)` bool, True = row counts. Returns a scalar float32 tensor.
    Gradient flows to `student_logits` only (the teacher's logits are detached).
    """
    _check(student_logits, teacher_logits, temperature)
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)  # student, (..., C)
    log_p = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)  # teacher = target
    per_row = plogp_ratio(log_p, log_q).sum(-1)  # KL(p || q) per row, (...)
    return temperature**2 * mean_rows(per_row, mask)


def hard_loss(
    student_logits: torch.Tensor, labels: torch.Tensor | None, *, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy of the un-tempered student, averaged over labelled rows (label != -100) that `mask` keeps;
    0 (keeping the graph) if none are or `labels` is None (an unlabelled batch).

    Logits `(..., C)`, labels and `mask` `(...)` (bool, True = row counts; padding positions are masked out even
    when their label is not -100)."""
    logits = student_logits.float().reshape(-1, student_logits.shape[-1])
    if labels is None:
        return logits.sum() * 0.0
    labels = labels.reshape(-1).to(logits.device)
    labelled = labels != IGNORE_INDEX
    if mask is not None:
        labelled = labelled & mask.reshape(-1).to(logits.device, torch.bool)
    if not bool(labelled.any()):
        return logits.sum() * 0.0  # keeps the graph, contributes nothing
    return F.cross_entropy(logits[labelled], labels[labelled].long())


def hinton_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    temperature: float,
    alpha: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """`alpha * kd_loss(T) + (1 - alpha) * CE(student, labels)` (Hinton et al. 2015).

    Unlabelled rows (label -100, or `labels=None`) still get the soft term; the hard term averages over labelled rows.
    `mask` `(...)` bool keeps rows (real tokens of `(B, T, V)` logits) in both terms.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    soft = kd_loss(student_logits, teacher_logits, temperature=temperature, mask=mask)
    if alpha == 1.0:
        return soft + hard_loss(student_logits, None)
    return alpha * soft + (1 - alpha) * hard_loss(student_logits, labels, mask=mask)


def binary_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-class Bernoulli KD for sigmoid (multi-label) teachers, summed over classes and averaged over rows:

        T² · (1/N) Σ_rows Σ_c [ p_c log(p_c / q_c) + (1 − p_c) log((1 − p_c) / (1 − q_c)) ],
        p = sigmoid(teacher / T), q = sigmoid(student / T)

    (the per-row sum over classes is the multi-label analogue of `kd_loss`'s batchmean; `binary_hard_loss` uses the
    same reduction, so `alpha` weighs like against like). Computed with log-sigmoid for stability. Logits `(..., C)`;
    `mask` `(...)` bool keeps rows; returns a scalar float32 tensor.
    """
    _check(student_logits, teacher_logits, temperature)
    s = student_logits.float() / temperature
    t = teacher_logits.detach().float() / temperature
    log_p1, log_p0 = F.logsigmoid(t), F.logsigmoid(-t)  # teacher log p, log (1-p)
    log_q1, log_q0 = F.logsigmoid(s), F.logsigmoid(-s)
    per_class = plogp_ratio(log_p1, log_q1) + plogp_ratio(log_p0, log_q0)
    return temperature**2 * mean_rows(per_class.sum(-1), mask)


def binary_hard_loss(
    student_logits: torch.Tensor, labels: torch.Tensor | None, *, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Multi-label hard term: binary cross-entropy of the un-tempered student against multi-hot labels, summed over
    classes and averaged over labelled rows (the reduction of `binary_kd_loss`):

        (1/N) Σ_rows Σ_c −[ y_c log sigmoid(s_c) + (1 − y_c) log(1 − sigmoid(s_c)) ]

    Logits `(..., C)`, labels the same shape with values in [0, 1]; a row whose labels are all -100 is unlabelled
    and left out, as is a row that `mask` `(...)` (bool) drops. 0 (keeping the graph) when no row is labelled or
    `labels` is None."""
    logits = student_logits.float()
    if labels is None:
        return logits.sum() * 0.0
    if labels.shape != logits.shape:
        raise ValueError(
            f"multi-label targets must be multi-hot with the logits' shape {tuple(logits.shape)}, got labels of shape "
            f"{tuple(labels.shape)}"
        )
    labels = labels.to(logits.device).float()
    labelled = ~(labels == IGNORE_INDEX).all(dim=-1)  # (...)
    if mask is not None:
        labelled = labelled & mask.to(logits.device, torch.bool)
    per_row = F.binary_cross_entropy_with_logits(logits, labels.clamp(0, 1), reduction="none").sum(-1)
    return mean_rows(per_row, labelled)


def standardize_logits(logits: torch.Tensor, *, eps: float = 1e-7) -> torch.Tensor:
    """Logit standardisation (Sun et al. 2024, "Logit Standardization in Knowledge Distillation"): per row,
    `(z - mean(z)) / (std(z) + eps)` over classes (unbiased std, as the authors' code). `(..., C)` -> `(..., C)`.

    Applied to teacher and student before the temperature, the student matches the teacher's logit *relations*
    rather than their magnitude and offset."""
    z = logits.float()
    return (z - z.mean(dim=-1, keepdim=True)) / (z.std(dim=-1, keepdim=True) + eps)


def dkd_parts(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float = 4.0,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoupled KD terms (Zhao et al. 2022, "Decoupled Knowledge Distillation"): `(TCKD, NCKD)`, both scaled by T².

    TCKD: KL between the binary distributions `[p_target, 1 - p_target]` of teacher and student.
    NCKD: KL between the distributions over the non-target classes only (the target class removed, renormalised).
    Logits `(..., C)` (`(B, C)`, or `(B, T, C)` flattened to rows), `target` `(...)` class indices, `mask` `(...)`
    bool (True = row counts; a masked row's target is never read). KL summed over classes, averaged over kept rows
    (batchmean); 0 with a graph when no row is kept.
    """
    _check(student_logits, teacher_logits, temperature)
    n_classes = student_logits.shape[-1]
    s = student_logits.float().reshape(-1, n_classes) / temperature  # (N, C)
    t = teacher_logits.detach().float().reshape(-1, n_classes) / temperature
    target = target.reshape(-1).to(s.device)
    if target.shape[0] != s.shape[0]:
        raise ValueError(f"dkd_parts: {target.shape[0]} targets for {s.shape[0]} rows of logits")
    if mask is not None:
        keep = mask.reshape(-1).to(s.device, torch.bool)
        if not bool(keep.any()):
            zero = student_logits.float().sum() * 0.0
            return zero, zero.clone()
        s, t, target = s[keep], t[keep], target[keep]
    gt = F.one_hot(target.long(), n_classes).bool()  # (N, C)

    def binary(z: torch.Tensor) -> torch.Tensor:  # log [p_target, 1 - p_target], (N, 2), stable
        total = torch.logsumexp(z, dim=-1)
        log_tgt = z.masked_select(gt) - total
        log_rest = torch.logsumexp(z.masked_fill(gt, float("-inf")), dim=-1) - total
        return torch.stack([log_tgt, log_rest], dim=-1)

    log_bs, log_bt = binary(s), binary(t)
    tckd = plogp_ratio(log_bt, log_bs).sum(-1).mean()
    # Non-target distributions: the target logit pushed to a huge finite negative (not -inf, whose 0 * inf would
    # make NaN gradients), so its probability is exactly 0 and its KL term vanishes.
    huge = torch.finfo(torch.float32).min / 4
    log_qs = F.log_softmax(s.masked_fill(gt, huge), dim=-1)  # (N, C)
    log_qt = F.log_softmax(t.masked_fill(gt, huge), dim=-1)
    per_class = plogp_ratio(log_qt, log_qs).masked_fill(gt, 0.0)  # (N, C)
    nckd = per_class.sum(-1).mean()
    return temperature**2 * tckd, temperature**2 * nckd


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float = 4.0,
    alpha: float = 1.0,
    beta: float = 8.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """`alpha * TCKD + beta * NCKD` (Zhao et al. 2022; paper defaults alpha=1, beta=8, T=4). See `dkd_parts`
    (`mask` `(...)` bool keeps rows)."""
    tckd, nckd = dkd_parts(student_logits, teacher_logits, target, temperature=temperature, mask=mask)
    return alpha * tckd + beta * nckd

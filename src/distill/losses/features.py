"""Feature-level distillation losses: pure tensor functions, float32 math, no modules, no state.

Inputs are student and teacher features that a method has already tapped (and, where needed, projected to the same
shape). A "vector" feature is `(B, D)`; a map is `(B, C, H, W)`; `as_vectors` turns either into `(B, D)`.
The teacher side is always detached here: gradients reach the student (and its projectors) only.

`mask` (bool, True = counts), where given, has the feature's leading shape: `(B, T)` for sequence features
`(B, T, D)` (real tokens, from the batch's `attention_mask`), or `(B,)` to keep whole examples. Every loss then
averages over kept positions only, so padding a batch changes neither the loss nor its gradients.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _mask_like(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`mask` `(B,)` or `(B, T)` as a float tensor broadcastable against `x` (whose leading shape it must be)."""
    if tuple(mask.shape) != tuple(x.shape[: mask.ndim]):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not index a feature of shape {tuple(x.shape)}")
    return mask.to(x.device, torch.bool).to(x.dtype).reshape(*mask.shape, *([1] * (x.ndim - mask.ndim)))


def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of `x` over every element whose leading index `mask` keeps (0 with a graph when none is kept)."""
    if mask is None:
        return x.mean()
    m = _mask_like(mask, x)
    per_position = math.prod(x.shape[mask.ndim:])  # elements per mask entry
    return (x * m).sum() / (m.sum() * per_position).clamp(min=1)


def as_vectors(feature: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """`(B, C, H, W)` -> global average pool -> `(B, C)`; `(B, T, D)` -> mean over T -> `(B, D)`; `(B, D)` as is.

    `mask` `(B, T)` pools a sequence over its real tokens only; `(B,)` keeps the kept examples' rows, `(B', D)`."""
    x = feature.float()
    if mask is not None and mask.ndim == 2 and x.ndim == 3:
        m = _mask_like(mask, x)  # (B, T, 1)
        return (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)  # (B, D)
    if x.ndim == 4:
        x = x.mean(dim=(2, 3))  # (B, C)
    elif x.ndim == 3:
        x = x.mean(dim=1)  # (B, D)
    x = x.reshape(x.shape[0], -1)  # (B, D)
    if mask is not None:
        if mask.ndim != 1:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not index a feature of shape {tuple(feature.shape)}")
        x = x[mask.to(x.device, torch.bool)]
    return x


def hint_loss(student: torch.Tensor, teacher: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """FitNets hint loss (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"): mean squared error between the
    (projected) student feature and the teacher feature, averaged over every element (of kept positions, with
    `mask`). Same shapes, any rank."""
    _same_shape(student, teacher, "hint_loss")
    if mask is None:
        return F.mse_loss(student.float(), teacher.detach().float())
    return _masked_mean((student.float() - teacher.detach().float()).pow(2), mask)


def attention_map(feature: torch.Tensor, *, p: float = 2.0) -> torch.Tensor:
    """Spatial attention of a feature map (Zagoruyko & Komodakis 2017): `mean_c |F|^p`, flattened, L2-normalised.

    `(B, C, H, W)` -> `(B, H*W)`."""
    a = feature.float().abs().pow(p).mean(dim=1)  # (B, H, W)
    return F.normalize(a.reshape(a.shape[0], -1), dim=1)  # (B, H*W)


def attention_loss(
    student: torch.Tensor, teacher: torch.Tensor, *, p: float = 2.0, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention"): mean squared difference
    of the normalised attention maps. Channels may differ; a larger map is average-pooled to the smaller one's H×W.

    `(B, Cs, H, W)`, `(B, Ct, H', W')` -> scalar; `mask` `(B,)` keeps examples."""
    if student.ndim != 4 or teacher.ndim != 4:
        raise ValueError(f"attention_loss needs (B, C, H, W) maps, got {tuple(student.shape)} and {tuple(teacher.shape)}")
    hw = (min(student.shape[2], teacher.shape[2]), min(student.shape[3], teacher.shape[3]))
    if student.shape[2:] != hw:
        student = F.adaptive_avg_pool2d(student.float(), hw)
    if teacher.shape[2:] != hw:
        teacher = F.adaptive_avg_pool2d(teacher.float(), hw)
    diff = attention_map(student, p=p) - attention_map(teacher.detach(), p=p)  # (B, H*W)
    return _masked_mean(diff.pow(2), mask)


def _pairwise_distances(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Euclidean distances `(B, B)` between the rows of `x` `(B, D)`, diagonal exactly 0."""
    sq = x.pow(2).sum(1)  # (B,)
    d2 = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2 * x @ x.t()).clamp(min=eps)  # (B, B)
    d = d2.sqrt()
    return d * (1 - torch.eye(x.shape[0], device=x.device, dtype=d.dtype))


def rkd_distance_loss(
    student: torch.Tensor, teacher: torch.Tensor, *, eps: float = 1e-12, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """RKD distance term (Park et al. 2019, "Relational Knowledge Distillation"): Huber (smooth-L1) loss between the
    pairwise distance matrices, each divided by its mean off-diagonal distance. `(B, Ds)`, `(B, Dt)` -> scalar
    (features pooled by `as_vectors(feature, mask)`)."""
    s, t = as_vectors(student, mask), as_vectors(teacher.detach(), mask)
    ds, dt = _pairwise_distances(s, eps), _pairwise_distances(t, eps)  # (B, B)
    off = ~torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    ds = ds / ds[off].mean().clamp(min=eps)
    dt = dt / dt[off].mean().clamp(min=eps)
    return F.smooth_l1_loss(ds, dt)


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """RKD angle term (Park et al. 2019): Huber loss between the cosines of the angles formed by every triplet,
    `cos ∠(x_i - x_j, x_k - x_j)`. `(B, Ds)`, `(B, Dt)` -> scalar; memory is O(B^2 D + B^3)."""
    def angles(x: torch.Tensor) -> torch.Tensor:
        e = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)  # (B, B, D): e[j, i] = unit(x_i - x_j)
        return torch.bmm(e, e.transpose(1, 2)).reshape(-1)  # (B*B*B,)

    return F.smooth_l1_loss(angles(as_vectors(student, mask)), angles(as_vectors(teacher.detach(), mask)))


def rkd_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Relational KD (Park et al. 2019): `distance_weight * distance + angle_weight * angle` (paper defaults 25, 50)."""
    loss = student.float().sum() * 0.0
    if distance_weight:
        loss = loss + distance_weight * rkd_distance_loss(student, teacher, mask=mask)
    if angle_weight:
        loss = loss + angle_weight * rkd_angle_loss(student, teacher, mask=mask)
    return loss


def pkt_loss(
    student: torch.Tensor, teacher: torch.Tensor, *, eps: float = 1e-7, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas 2018, "Learning Deep Representations with Probabilistic
    Knowledge Transfer"), cosine-kernel form: each side's cosine similarities are mapped to [0, 1], normalised row-wise
    into conditional probabilities, and the loss is `mean_ij p_t log(p_t / p_s)` (mean over all B×B entries).
    `(B, Ds)`, `(B, Dt)` -> scalar (features pooled by `as_vectors(feature, mask)`). Feature widths may differ."""
    def conditional(x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, p=2, dim=1, eps=eps)  # (B, D)
        sim = (x @ x.t() + 1.0) / 2.0  # (B, B) in [0, 1]
        return sim / sim.sum(dim=1, keepdim=True)

    # The (B, B) kernel in float64: the loss is a mean of p·log(ratio) with ratios within ~1e-4 of 1, so float32
    # rounding of one input ulp moved it by ~3e-4 relative (and x 30000, the method's default weight). Cheap at B×B.
    p_s = conditional(as_vectors(student, mask).double())
    p_t = conditional(as_vectors(teacher.detach(), mask).double())
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean().float()


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor, *, mask: torch.Tensor | None = None) -> torch.Tensor:
    """`mean_rows (1 - cos(s_b, t_b))` between paired hidden states, each example flattened to one vector. Same
    shapes -> scalar. With `mask`, masked positions are left out of each example's vector (zeroed on both sides, which
    changes neither dot product nor norms), and an example with no kept position is left out of the mean.

    (DistilBERT, Sanh et al. 2019, takes the cosine per token instead, averaged over real tokens.)"""
    _same_shape(student, teacher, "cosine_loss")
    s, t = student.float(), teacher.detach().float()
    keep = None
    if mask is not None:
        m = _mask_like(mask, s)
        s, t = s * m, t * m
        keep = mask.reshape(mask.shape[0], -1).to(s.device, torch.bool).any(dim=1)  # (B,)
    s = s.reshape(s.shape[0], -1)  # (B, T*D)
    t = t.reshape(t.shape[0], -1)
    return _masked_mean(1.0 - F.cosine_similarity(s, t, dim=1, eps=1e-8), keep)


def crd_loss(
    student_embed: torch.Tensor,
    teacher_embed: torch.Tensor,
    student_bank: torch.Tensor,
    teacher_bank: torch.Tensor,
    *,
    temperature: float = 0.07,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Contrastive representation distillation (Tian et al. 2020, "Contrastive Representation Distillation"),
    in its softmax (InfoNCE) form over memory-bank contrasts, both directions.

    `student_embed`, `teacher_embed`: `(B, D)` L2-normalised embeddings of the batch (both trainable heads).
    `student_bank`, `teacher_bank`: `(B, 1+K, D)` memory rows; column 0 is each example's own (positive) row, the K
    others are negatives. The student anchor is contrasted with teacher memory and vice versa:
    `CE([s·t⁺, s·t⁻₁..K] / τ, 0) + CE([t·s⁺, t·s⁻₁..K] / τ, 0)`, averaged over the anchors `mask` `(B,)` keeps.
    (Sequence features are pooled over real tokens before the embedding heads: `as_vectors(feature, mask)`.)
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s, t = student_embed.float(), teacher_embed.float()
    logits_s = torch.bmm(teacher_bank.float(), s.unsqueeze(2)).squeeze(2) / temperature  # (B, 1+K)
    logits_t = torch.bmm(student_bank.float(), t.unsqueeze(2)).squeeze(2) / temperature  # (B, 1+K)
    target = torch.zeros(s.shape[0], dtype=torch.long, device=s.device)
    per_row = F.cross_entropy(logits_s, target, reduction="none") + F.cross_entropy(logits_t, target, reduction="none")
    return _masked_mean(per_row, mask)


def _same_shape(student: torch.Tensor, teacher: torch.Tensor, name: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"{name}: student feature {tuple(student.shape)} and teacher feature {tuple(teacher.shape)} differ; "
            "project the student feature first"
        )

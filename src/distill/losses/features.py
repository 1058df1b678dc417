"""Feature-level distillation losses: pure tensor functions, float32 math, no modules, no state.

Inputs are student and teacher features that a method has already tapped (and, where needed, projected to the same
shape). A "vector" feature is `(B, D)`; a map is `(B, C, H, W)`; `as_vectors` turns either into `(B, D)`.
The teacher side is always detached here: gradients reach the student (and its projectors) only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def as_vectors(feature: torch.Tensor) -> torch.Tensor:
    """`(B, C, H, W)` -> global average pool -> `(B, C)`; `(B, T, D)` -> mean over T -> `(B, D)`; `(B, D)` as is."""
    x = feature.float()
    if x.ndim == 4:
        return x.mean(dim=(2, 3))  # (B, C)
    if x.ndim == 3:
        return x.mean(dim=1)  # (B, D)
    return x.reshape(x.shape[0], -1)  # (B, D)


def hint_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """FitNets hint loss (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"): mean squared error between the
    (projected) student feature and the teacher feature, averaged over every element. Same shapes, any rank."""
    _same_shape(student, teacher, "hint_loss")
    return F.mse_loss(student.float(), teacher.detach().float())


def attention_map(feature: torch.Tensor, *, p: float = 2.0) -> torch.Tensor:
    """Spatial attention of a feature map (Zagoruyko & Komodakis 2017): `mean_c |F|^p`, flattened, L2-normalised.

    `(B, C, H, W)` -> `(B, H*W)`."""
    a = feature.float().abs().pow(p).mean(dim=1)  # (B, H, W)
    return F.normalize(a.reshape(a.shape[0], -1), dim=1)  # (B, H*W)


def attention_loss(student: torch.Tensor, teacher: torch.Tensor, *, p: float = 2.0) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention"): mean squared difference
    of the normalised attention maps. Channels may differ; a larger map is average-pooled to the smaller one's H×W.

    `(B, Cs, H, W)`, `(B, Ct, H', W')` -> scalar."""
    if student.ndim != 4 or teacher.ndim != 4:
        raise ValueError(f"attention_loss needs (B, C, H, W) maps, got {tuple(student.shape)} and {tuple(teacher.shape)}")
    hw = (min(student.shape[2], teacher.shape[2]), min(student.shape[3], teacher.shape[3]))
    if student.shape[2:] != hw:
        student = F.adaptive_avg_pool2d(student.float(), hw)
    if teacher.shape[2:] != hw:
        teacher = F.adaptive_avg_pool2d(teacher.float(), hw)
    diff = attention_map(student, p=p) - attention_map(teacher.detach(), p=p)  # (B, H*W)
    return diff.pow(2).mean()


def _pairwise_distances(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Euclidean distances `(B, B)` between the rows of `x` `(B, D)`, diagonal exactly 0."""
    sq = x.pow(2).sum(1)  # (B,)
    d2 = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2 * x @ x.t()).clamp(min=eps)  # (B, B)
    d = d2.sqrt()
    return d * (1 - torch.eye(x.shape[0], device=x.device, dtype=d.dtype))


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor, *, eps: float = 1e-12) -> torch.Tensor:
    """RKD distance term (Park et al. 2019, "Relational Knowledge Distillation"): Huber (smooth-L1) loss between the
    pairwise distance matrices, each divided by its mean off-diagonal distance. `(B, Ds)`, `(B, Dt)` -> scalar."""
    s, t = as_vectors(student), as_vectors(teacher.detach())
    ds, dt = _pairwise_distances(s, eps), _pairwise_distances(t, eps)  # (B, B)
    off = ~torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
    ds = ds / ds[off].mean().clamp(min=eps)
    dt = dt / dt[off].mean().clamp(min=eps)
    return F.smooth_l1_loss(ds, dt)


def rkd_angle_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """RKD angle term (Park et al. 2019): Huber loss between the cosines of the angles formed by every triplet,
    `cos ∠(x_i - x_j, x_k - x_j)`. `(B, Ds)`, `(B, Dt)` -> scalar; memory is O(B^2 D + B^3)."""
    def angles(x: torch.Tensor) -> torch.Tensor:
        e = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)  # (B, B, D): e[j, i] = unit(x_i - x_j)
        return torch.bmm(e, e.transpose(1, 2)).reshape(-1)  # (B*B*B,)

    return F.smooth_l1_loss(angles(as_vectors(student)), angles(as_vectors(teacher.detach())))


def rkd_loss(
    student: torch.Tensor, teacher: torch.Tensor, *, distance_weight: float = 25.0, angle_weight: float = 50.0
) -> torch.Tensor:
    """Relational KD (Park et al. 2019): `distance_weight * distance + angle_weight * angle` (paper defaults 25, 50)."""
    loss = student.float().sum() * 0.0
    if distance_weight:
        loss = loss + distance_weight * rkd_distance_loss(student, teacher)
    if angle_weight:
        loss = loss + angle_weight * rkd_angle_loss(student, teacher)
    return loss


def pkt_loss(student: torch.Tensor, teacher: torch.Tensor, *, eps: float = 1e-7) -> torch.Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas 2018, "Learning Deep Representations with Probabilistic
    Knowledge Transfer"), cosine-kernel form: each side's cosine similarities are mapped to [0, 1], normalised row-wise
    into conditional probabilities, and the loss is `mean_ij p_t log(p_t / p_s)` (mean over all B×B entries).
    `(B, Ds)`, `(B, Dt)` -> scalar. Feature widths may differ."""
    def conditional(x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, p=2, dim=1, eps=eps)  # (B, D)
        sim = (x @ x.t() + 1.0) / 2.0  # (B, B) in [0, 1]
        return sim / sim.sum(dim=1, keepdim=True)

    p_s = conditional(as_vectors(student))
    p_t = conditional(as_vectors(teacher.detach()))
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """`mean_rows (1 - cos(s_b, t_b))` between paired hidden states, each example flattened to one vector (as in
    cosine-embedding hidden-state losses, e.g. DistilBERT, Sanh et al. 2019). Same shapes -> scalar."""
    _same_shape(student, teacher, "cosine_loss")
    s = student.float().reshape(student.shape[0], -1)  # (B, D)
    t = teacher.detach().float().reshape(teacher.shape[0], -1)
    return (1.0 - F.cosine_similarity(s, t, dim=1, eps=1e-8)).mean()


def crd_loss(
    student_embed: torch.Tensor,
    teacher_embed: torch.Tensor,
    student_bank: torch.Tensor,
    teacher_bank: torch.Tensor,
    *,
    temperature: float = 0.07,
) -> torch.Tensor:
    """Contrastive representation distillation (Tian et al. 2020, "Contrastive Representation Distillation"),
    in its softmax (InfoNCE) form over memory-bank contrasts, both directions.

    `student_embed`, `teacher_embed`: `(B, D)` L2-normalised embeddings of the batch (both trainable heads).
    `student_bank`, `teacher_bank`: `(B, 1+K, D)` memory rows; column 0 is each example's own (positive) row, the K
    others are negatives. The student anchor is contrasted with teacher memory and vice versa:
    `CE([s·t⁺, s·t⁻₁..K] / τ, 0) + CE([t·s⁺, t·s⁻₁..K] / τ, 0)`.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s, t = student_embed.float(), teacher_embed.float()
    logits_s = torch.bmm(teacher_bank.float(), s.unsqueeze(2)).squeeze(2) / temperature  # (B, 1+K)
    logits_t = torch.bmm(student_bank.float(), t.unsqueeze(2)).squeeze(2) / temperature  # (B, 1+K)
    target = torch.zeros(s.shape[0], dtype=torch.long, device=s.device)
    return F.cross_entropy(logits_s, target) + F.cross_entropy(logits_t, target)


def _same_shape(student: torch.Tensor, teacher: torch.Tensor, name: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"{name}: student feature {tuple(student.shape)} and teacher feature {tuple(teacher.shape)} differ; "
            "project the student feature first"
        )

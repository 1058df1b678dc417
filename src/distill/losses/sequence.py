"""Token-level divergences for language-model distillation, memory-bounded over the vocabulary.

Every loss compares the student's and the teacher's next-token distributions at each kept position ("row") and
averages over the kept rows (never over the vocabulary, never over padding):

    loss = (1 / K) Σ_{kept rows} D(row),  p = softmax(teacher / T) (target), q = softmax(student / T)

Shapes: logits `(B, T, V)` or `(N, V)`; `mask` the leading shape, bool, True = the row counts (real tokens whose next
token is a target; build it with `distill.batch.next_token_batch` + `token_mask` for causal LMs). Softmax in float32
whatever the logits' dtype. The teacher is detached. Temperature divides both sides' logits; **no T² factor** here
(the values equal TRL's `generalized_jsd_loss` for the same β and T; `methods/lm_kd.py` applies Hinton's T²).

Divergences (p teacher, q student):
- `forward_kl`: KL(p ‖ q) — mode covering (what `kd_loss` computes, without T²).
- `reverse_kl`: KL(q ‖ p) — mode seeking (MiniLLM, TRL's `DistillationTrainer` default).
- `generalized_jsd(beta)`: GKD (Agarwal et al. 2024, Eq. 1, TRL's convention):
  m = β p + (1 − β) q, JSD_β = β KL(p ‖ m) + (1 − β) KL(q ‖ m); β = 0 is *defined* as forward KL and β = 1 as
  reverse KL (as TRL does; the formula itself vanishes at both ends: JSD_β / β → KL(p ‖ q) as β → 0 and
  JSD_β / (1 − β) → KL(q ‖ p) as β → 1). β outside [0, 1] is a `DistillError`.
- `total_variation`: ½ Σ_v |p_v − q_v|.
- `skew_kl(alpha, reverse=False)`: DistiLLM (Ko et al. 2024) α-skew KL: forward KL(p ‖ α p + (1 − α) q); reverse
  KL(q ‖ α q + (1 − α) p). α = 0 gives plain forward / reverse KL; DistiLLM uses α = 0.1. (DistiLLM's code
  reports the forward one as the cross-entropy −Σ p log m, i.e. without the teacher's entropy: same gradient.)

Memory: with `chunk_size` (rows per chunk; default "auto": about 2**21 logits per chunk) a custom autograd Function
computes the loss *and its gradient* one chunk of kept rows at a time in the forward pass, writing the gradient into
one buffer shaped like the student's logits; nothing of size `(N, V)` other than that gradient is ever allocated (a
few `(chunk, V)` float32 temporaries live at a time). Rows the mask drops are never read (NaN there is harmless). `chunk_size=None` is the naive full-tensor autograd version (the reference the tests and
`bench/llm_loss_memory.py` compare against). The chunked backward may run once (no `retain_graph` reuse).

`chunked_head_loss` goes one step further for training: it takes the final hidden states and `lm_head` weights of
both models and projects to the vocabulary one chunk at a time, so no `(N, V)` logits tensor of either model exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from ..batch import IGNORE_INDEX
from ..errors import DistillError
from .logits import plogp_ratio

__all__ = ["DIVERGENCES", "chunked_cross_entropy", "chunked_head_loss", "divergence_rows", "forward_kl",
           "generalized_jsd", "reverse_kl", "sequence_divergence", "skew_kl", "total_variation"]

DEFAULT_CHUNK = "auto"  # rows per chunk: about 2**21 logits (an 8 MB float32 buffer), at least 8 rows
CHUNK_ELEMENTS = 2**21
RowsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (student logits, teacher logits) float32 -> (rows,)


def _log_mix(a: torch.Tensor, wa: float, b: torch.Tensor, wb: float) -> torch.Tensor:
    """log(wa·e^a + wb·e^b); a token both sides rule out (-inf, -inf) gives -inf with a zero (not NaN) gradient."""
    dead = torch.isneginf(a) & torch.isneginf(b)
    mixed = torch.logaddexp(torch.where(dead, 0.0, a) + math.log(wa), torch.where(dead, 0.0, b) + math.log(wb))
    return torch.where(dead, -math.inf, mixed)


def _fkl(ls: torch.Tensor, lt: torch.Tensor) -> torch.Tensor:
    return plogp_ratio(lt, ls).sum(-1)


def _rkl(ls: torch.Tensor, lt: torch.Tensor) -> torch.Tensor:
    return plogp_ratio(ls, lt).sum(-1)


def _jsd(ls: torch.Tensor, lt: torch.Tensor, beta: float) -> torch.Tensor:
    if beta == 0.0:
        return _fkl(ls, lt)
    if beta == 1.0:
        return _rkl(ls, lt)
    log_m = _log_mix(lt, beta, ls, 1.0 - beta)  # m = β p + (1 − β) q
    return beta * plogp_ratio(lt, log_m).sum(-1) + (1.0 - beta) * plogp_ratio(ls, log_m).sum(-1)


def _tv(ls: torch.Tensor, lt: torch.Tensor) -> torch.Tensor:
    return 0.5 * (ls.exp() - lt.exp()).abs().sum(-1)


def _skew(ls: torch.Tensor, lt: torch.Tensor, alpha: float, reverse: bool) -> torch.Tensor:
    if alpha == 0.0:
        return _rkl(ls, lt) if reverse else _fkl(ls, lt)
    if reverse:  # KL(q ‖ α q + (1 − α) p)
        log_m = _log_mix(ls, alpha, lt, 1.0 - alpha) if alpha < 1 else ls
        return plogp_ratio(ls, log_m).sum(-1)
    log_m = _log_mix(lt, alpha, ls, 1.0 - alpha) if alpha < 1 else lt
    return plogp_ratio(lt, log_m).sum(-1)  # KL(p ‖ α p + (1 − α) q)


def _tempered(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], temperature: float) -> RowsFn:
    def rows(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return fn(F.log_softmax(s.float() / temperature, -1), F.log_softmax(t.float() / temperature, -1))
    return rows


DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tv", "skew_kl", "skew_rkl")


def divergence_rows(name: str, *, temperature: float = 1.0, beta: float = 0.5, skew_alpha: float = 0.1) -> RowsFn:
    """The per-row divergence `f(student_logits, teacher_logits) -> (rows,)` named `name` (one of `DIVERGENCES`):
    float32, tempered, teacher = target. `beta` is read by `jsd`, `skew_alpha` by `skew_kl`/`skew_rkl`."""
    if temperature <= 0:
        raise DistillError(f"temperature must be > 0, got {temperature}")
    if name == "jsd" and not 0.0 <= beta <= 1.0:
        raise DistillError(f"generalized JSD: beta must be in [0, 1] (0 = forward KL, 1 = reverse KL), got {beta}")
    if name.startswith("skew") and not 0.0 <= skew_alpha <= 1.0:
        raise DistillError(f"skew KL: alpha must be in [0, 1], got {skew_alpha}")
    fns: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
        "forward_kl": _fkl, "reverse_kl": _rkl, "jsd": partial(_jsd, beta=float(beta)), "tv": _tv,
        "skew_kl": partial(_skew, alpha=float(skew_alpha), reverse=False),
        "skew_rkl": partial(_skew, alpha=float(skew_alpha), reverse=True),
    }
    if name not in fns:
        raise DistillError(f"unknown divergence {name!r}; choose one of {', '.join(DIVERGENCES)}")
    return _tempered(fns[name], float(temperature))


def _chunk_rows(chunk_size: int | str, vocab: int) -> int:
    if chunk_size == "auto":
        return max(8, CHUNK_ELEMENTS // max(vocab, 1))
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows, 'auto' or None, got {chunk_size!r}")
    return chunk_size


def _kept_rows(lead: torch.Size, mask: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    n = math.prod(lead)
    if mask is None:
        return torch.arange(n, device=device)
    if tuple(mask.shape) != tuple(lead):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not index logits rows {tuple(lead)}")
    return mask.reshape(-1).to(device, torch.bool).nonzero().squeeze(1)


class _ChunkedDivergence(torch.autograd.Function):
    """Mean of `rows_fn` over the rows `rows` of `(N, V)` logits, with its gradient computed chunk by chunk in the
    forward pass (into one buffer shaped like the student's logits) and handed out in the backward pass."""

    @staticmethod
    def forward(ctx, student, teacher, rows, rows_fn, chunk, want_grad):  # type: ignore[override]
        need = ctx.needs_input_grad[0] and want_grad
        grad = torch.zeros_like(student) if need else None
        count = rows.numel()
        total = torch.zeros((), dtype=torch.float64, device=student.device)
        for start in range(0, count, chunk):
            idx = rows[start:start + chunk]
            s, t = student.index_select(0, idx), teacher.index_select(0, idx)
            if need:  # float32 math even under an outer autocast (the softmaxes upcast anyway)
                with torch.enable_grad(), torch.autocast(device_type=s.device.type, enabled=False):
                    s32 = s.float().requires_grad_(True)
                    per = rows_fn(s32, t)
                    (g,) = torch.autograd.grad(per.sum(), s32)
                grad.index_copy_(0, idx, (g / count).to(grad.dtype))
            else:
                per = rows_fn(s, t)
            total += per.detach().double().sum()
            del s, t, per
        ctx.save_for_backward(*([grad] if need else []))
        ctx.used = False
        return (total / max(count, 1)).float()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        if ctx.used:
            raise RuntimeError("the chunked divergence's backward can run once (no retain_graph reuse)")
        ctx.used = True
        (grad,) = ctx.saved_tensors
        if not bool(grad_out == 1):
            grad.mul_(grad_out.to(grad.dtype))  # in place: no second (N, V) buffer
        return grad, None, None, None, None, None


def sequence_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    rows_fn: RowsFn,
    *,
    mask: torch.Tensor | None = None,
    chunk_size: int | str | None = DEFAULT_CHUNK,
) -> torch.Tensor:
    """Mean of `rows_fn` (see `divergence_rows`) over the rows of `(..., V)` logits that `mask` keeps; 0 with a graph
    when none is kept. `chunk_size=None`: the naive full-tensor version."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape; they must share a vocabulary")
    vocab = student_logits.shape[-1]
    lead = student_logits.shape[:-1]
    s = student_logits.reshape(-1, vocab)
    t = teacher_logits.detach().reshape(-1, vocab)
    rows = _kept_rows(lead, mask, s.device)
    if rows.numel() == 0:
        return student_logits.float().sum() * 0.0
    if chunk_size is None:
        return rows_fn(s.index_select(0, rows), t.index_select(0, rows)).mean()
    return _ChunkedDivergence.apply(s, t, rows, rows_fn, _chunk_rows(chunk_size, vocab), torch.is_grad_enabled())


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0,
               mask: torch.Tensor | None = None, chunk_size: int | str | None = DEFAULT_CHUNK) -> torch.Tensor:
    """Mean over kept rows of KL(p ‖ q), p = softmax(teacher/T), q = softmax(student/T); no T² factor."""
    return sequence_divergence(student_logits, teacher_logits, divergence_rows("forward_kl", temperature=temperature),
                               mask=mask, chunk_size=chunk_size)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0,
               mask: torch.Tensor | None = None, chunk_size: int | str | None = DEFAULT_CHUNK) -> torch.Tensor:
    """Mean over kept rows of KL(q ‖ p) (student first): mode seeking."""
    return sequence_divergence(student_logits, teacher_logits, divergence_rows("reverse_kl", temperature=temperature),
                               mask=mask, chunk_size=chunk_size)


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, beta: float = 0.5,
                    temperature: float = 1.0, mask: torch.Tensor | None = None,
                    chunk_size: int | str | None = DEFAULT_CHUNK) -> torch.Tensor:
    """GKD's generalized JSD (TRL's convention): β KL(p ‖ m) + (1 − β) KL(q ‖ m), m = β p + (1 − β) q; β = 0 is
    forward KL, β = 1 reverse KL; β outside [0, 1] raises `DistillError`."""
    return sequence_divergence(student_logits, teacher_logits,
                               divergence_rows("jsd", temperature=temperature, beta=beta), mask=mask,
                               chunk_size=chunk_size)


def total_variation(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 1.0,
                    mask: torch.Tensor | None = None, chunk_size: int | str | None = DEFAULT_CHUNK) -> torch.Tensor:
    """Mean over kept rows of ½ Σ_v |p_v − q_v| (in [0, 1])."""
    return sequence_divergence(student_logits, teacher_logits, divergence_rows("tv", temperature=temperature),
                               mask=mask, chunk_size=chunk_size)


def skew_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, alpha: float = 0.1,
            reverse: bool = False, temperature: float = 1.0, mask: torch.Tensor | None = None,
            chunk_size: int | str | None = DEFAULT_CHUNK) -> torch.Tensor:
    """DistiLLM's α-skew KL: forward KL(p ‖ α p + (1 − α) q), or with `reverse` KL(q ‖ α q + (1 − α) p)."""
    name = "skew_rkl" if reverse else "skew_kl"
    return sequence_divergence(student_logits, teacher_logits,
                               divergence_rows(name, temperature=temperature, skew_alpha=alpha), mask=mask,
                               chunk_size=chunk_size)


def _ce_rows(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    s = s.float()
    return torch.logsumexp(s, -1) - s.gather(-1, y.long().reshape(-1, 1)).squeeze(-1)


def chunked_cross_entropy(student_logits: torch.Tensor, labels: torch.Tensor | None, *,
                          mask: torch.Tensor | None = None, chunk_size: int | str = DEFAULT_CHUNK) -> torch.Tensor:
    """Cross-entropy of `(..., V)` logits against `labels` `(...)` averaged over rows with a label (!= -100) that
    `mask` keeps, chunked like the divergences (equal to `losses.hard_loss`); 0 with a graph when there is none."""
    if labels is None:
        return student_logits.float().sum() * 0.0
    vocab = student_logits.shape[-1]
    keep = labels.to(student_logits.device) != IGNORE_INDEX
    if mask is not None:
        keep = keep & mask.to(keep.device, torch.bool)
    rows = _kept_rows(student_logits.shape[:-1], keep, student_logits.device)
    if rows.numel() == 0:
        return student_logits.float().sum() * 0.0
    y = labels.reshape(-1, 1).to(student_logits.device)
    return _ChunkedDivergence.apply(student_logits.reshape(-1, vocab), y, rows, _ce_rows,
                                    _chunk_rows(chunk_size, vocab), torch.is_grad_enabled())


class _ChunkedHead(torch.autograd.Function):
    """`soft_weight · mean_{kept} rows_fn + hard_weight · mean_{kept, labelled} CE`, projecting hidden states to
    logits one chunk of rows at a time; gradients for the student's hidden states, head weight and bias."""

    @staticmethod
    def forward(ctx, hs, ws, bs, ht, wt, bt, rows, labels, rows_fn,  # type: ignore[override]
                soft_weight, hard_weight, chunk, want_grad):
        need_h, need_w, need_b = (bool(ctx.needs_input_grad[i] and want_grad) for i in range(3))
        need = need_h or need_w or need_b
        grad_h = torch.zeros_like(hs) if need_h else None
        grad_w = torch.zeros(ws.shape, dtype=torch.float32, device=ws.device) if need_w else None
        grad_b = torch.zeros(bs.shape, dtype=torch.float32, device=bs.device) if need_b else None
        n_soft = rows.numel()
        n_hard = int((labels.index_select(0, rows) != IGNORE_INDEX).sum()) if labels is not None else 0
        ws32, wt32 = ws.detach().float(), wt.detach().float()
        bs32 = bs.detach().float() if bs is not None else None
        bt32 = bt.detach().float() if bt is not None else None
        soft = torch.zeros((), dtype=torch.float64, device=hs.device)
        hard = torch.zeros((), dtype=torch.float64, device=hs.device)
        for start in range(0, n_soft, chunk):
            idx = rows[start:start + chunk]
            h = hs.index_select(0, idx).float()
            no_autocast = torch.autocast(device_type=hs.device.type, enabled=False)  # float32 projections
            with torch.no_grad(), no_autocast:
                t_logits = F.linear(ht.index_select(0, idx).float(), wt32, bt32)
            with torch.enable_grad(), torch.autocast(device_type=hs.device.type, enabled=False):
                s_logits = F.linear(h, ws32, bs32).requires_grad_(True)
                per = rows_fn(s_logits, t_logits)
                total = per.sum() * (soft_weight / max(n_soft, 1))
                ce_sum = s_logits.sum() * 0.0
                if labels is not None and n_hard:
                    y = labels.index_select(0, idx)
                    ce_sum = F.cross_entropy(s_logits, y.long(), ignore_index=IGNORE_INDEX, reduction="sum")
                    total = total + ce_sum * (hard_weight / n_hard)
                if need:
                    (g,) = torch.autograd.grad(total, s_logits)  # (chunk, V) float32
            soft += per.detach().double().sum()
            hard += ce_sum.detach().double()
            if need:
                if need_h:
                    grad_h.index_copy_(0, idx, (g @ ws32).to(grad_h.dtype))
                if need_w:
                    grad_w.addmm_(g.t(), h)
                if need_b:
                    grad_b += g.sum(0)
            del h, t_logits, s_logits, per
        soft_mean = (soft / max(n_soft, 1)).float()
        hard_mean = (hard / max(n_hard, 1)).float()
        loss = soft_weight * soft_mean + hard_weight * hard_mean
        ctx.save_for_backward(*(x if x is not None else torch.empty(0) for x in (grad_h, grad_w, grad_b)))
        ctx.flags = (need_h, need_w, need_b)
        ctx.dtypes = (ws.dtype, bs.dtype if bs is not None else None)
        ctx.mark_non_differentiable(soft_mean, hard_mean)
        return loss, soft_mean, hard_mean

    @staticmethod
    def backward(ctx, grad_out, _soft, _hard):  # type: ignore[override]
        grads = []
        for flag, g, dtype in zip(ctx.flags, ctx.saved_tensors, (None, *ctx.dtypes)):
            if not flag:
                grads.append(None)
                continue
            g = g * grad_out.to(g.dtype) if not bool(grad_out == 1) else g
            grads.append(g.to(dtype) if dtype is not None else g)
        return grads[0], grads[1], grads[2], None, None, None, None, None, None, None, None, None, None


def chunked_head_loss(
    student_hidden: torch.Tensor,
    student_head: torch.nn.Module,
    teacher_hidden: torch.Tensor,
    teacher_head: torch.nn.Module,
    rows_fn: RowsFn,
    *,
    labels: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    soft_weight: float = 1.0,
    hard_weight: float = 0.0,
    chunk_size: int | str = DEFAULT_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(loss, soft, hard)` from final hidden states `(..., H)` and `lm_head` linears (`weight` `(V, H)`, optional
    `bias`) of both models, without any `(N, V)` logits tensor: per chunk of kept rows, logits = hidden @ weightᵀ
    (+ bias), `soft` = mean over kept rows of `rows_fn`, `hard` = cross-entropy of the student on `labels` (aligned
    with the rows, -100 = no target) averaged over kept labelled rows; `loss = soft_weight·soft + hard_weight·hard`.
    Gradients reach the student's hidden states and head; `soft`/`hard` are detached. Equal (to float rounding) to
    the same losses on `student_head(student_hidden)` logits."""
    hs = student_hidden.reshape(-1, student_hidden.shape[-1])
    ht = teacher_hidden.detach().reshape(-1, teacher_hidden.shape[-1])
    if hs.shape[0] != ht.shape[0]:
        raise ValueError(f"{hs.shape[0]} student rows but {ht.shape[0]} teacher rows")
    ws, bs = student_head.weight, getattr(student_head, "bias", None)
    wt, bt = teacher_head.weight, getattr(teacher_head, "bias", None)
    if ws.shape[0] != wt.shape[0]:
        raise DistillError(f"student head predicts {ws.shape[0]} tokens, teacher head {wt.shape[0]}: the models must "
                           "share a vocabulary (cross-tokenizer distillation is not supported)")
    rows = _kept_rows(student_hidden.shape[:-1], mask, hs.device)
    y = labels.reshape(-1).to(hs.device) if labels is not None else None
    if rows.numel() == 0:
        zero = hs.float().sum() * 0.0 + ws.float().sum() * 0.0
        return zero, zero.detach(), zero.detach()
    return _ChunkedHead.apply(hs, ws, bs, ht, wt.detach(), bt.detach() if bt is not None else None, rows, y, rows_fn,
                              float(soft_weight), float(hard_weight), _chunk_rows(chunk_size, ws.shape[0]),
                              torch.is_grad_enabled())

"""Language-model distillation: token-level divergences between a causal-LM student and teacher sharing a vocabulary.

    loss = alpha · T² · D(teacher_T ‖ student_T) + (1 − alpha) · CE(student, next tokens)

D is `divergence` (losses/sequence.py: forward_kl, reverse_kl, jsd with `beta` in GKD's convention, tv, skew_kl /
skew_rkl with `skew_alpha`), averaged over the positions whose next token is a target: the batch reaches `forward`
through `Method.prepare_batch`, which turns a causal LM's labels into next-token targets, so position t is scored
against token t+1 in both terms and prompt tokens (-100) and padding never count. T² (Hinton) keeps the soft
gradient's scale independent of T; at T = 1 (the usual LLM setting) the soft term is exactly the divergence TRL's
`generalized_jsd_loss` reports.

Memory: with `head: chunked` (the default `auto` picks it when both models expose an `lm_head` and the teacher runs
live) the loss gets both models' final hidden states and `lm_head` weights and projects to the vocabulary one chunk
of tokens at a time (`losses.chunked_head_loss`): no `(B·T, V)` logits tensor of either model ever exists (training
steps; in eval mode the logits path runs). With `head: logits` the models' logits are used and the divergence is
chunked (`chunk_size`; null = naive).

Training modes (`prepare_batch`, before each training step; one training loop):
- supervised KD: the batch as given (text with labels; -100 on prompts);
- `seq_kd: true`: sequence-level KD — the teacher completes each batch's prompts (`generate`) and the student trains
  on those completions;
- `on_policy: λ`: a fraction λ of batches is replaced by completions sampled from the current student, scored token
  by token by the teacher (GKD). Mixtures: both options together (seq-KD batches, of which λ are on-policy instead).
A row's prompt is its leading positions labelled -100 (the whole row when it has no label). Generation uses the
model's own `generate` (sampling at `gen_temperature`, `max_new_tokens`), seeded with `seed + 2·step` (+1 for the
student; under gradient accumulation each later micro-batch of a step gets its own seed and on-policy draw, derived
from (seed, step, micro-batch); recorded in `self.generation_log`), so a run's completions — and a resumed run's — are
reproducible.

Before the first step `check` refuses models with different vocabularies (cross-tokenizer distillation is not
supported); `check_vocabulary` also compares tokenizers when given.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from ..batch import IGNORE_INDEX, SHIFTED_KEY, forward_logits, inputs_of, labels_of, token_mask
from ..errors import DistillError
from ..losses import chunked_cross_entropy, chunked_head_loss, divergence_rows, hard_loss, sequence_divergence
from .base import Method, register_method


class LMKDOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    divergence: Literal["forward_kl", "reverse_kl", "jsd", "tv", "skew_kl", "skew_rkl"] = "forward_kl"
    beta: float = Field(0.5, ge=0.0, le=1.0)  # jsd: 0 = forward KL, 1 = reverse KL (GKD)
    skew_alpha: float = Field(0.1, ge=0.0, le=1.0)  # skew_kl / skew_rkl (DistiLLM's 0.1)
    head: Literal["auto", "logits", "chunked"] = "auto"
    chunk_size: int | Literal["auto"] | None = "auto"  # rows per chunk; None: naive full-tensor loss (logits head)
    seq_kd: bool = False
    on_policy: float = Field(0.0, ge=0.0, le=1.0)  # λ: fraction of batches of student-sampled completions
    max_new_tokens: int = Field(16, ge=1, le=4096)
    gen_temperature: float = Field(1.0, gt=0.0, le=10.0)
    seed: int = 0


def _vocab_size(model: Any) -> int | None:
    head = model.get_output_embeddings() if callable(getattr(model, "get_output_embeddings", None)) else None
    if isinstance(getattr(head, "weight", None), torch.Tensor):
        return int(head.weight.shape[0])
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(size) if size is not None else None


def check_vocabulary(student: Any, teacher: Any, *, student_tokenizer: Any = None, teacher_tokenizer: Any = None) -> None:
    """Raise `DistillError` unless student and teacher predict over the same vocabulary: equal `config.vocab_size`
    and output-head size, and, when both tokenizers are given, identical token → id maps."""
    for what, s, t in (("config.vocab_size", getattr(getattr(student, "config", None), "vocab_size", None),
                        getattr(getattr(teacher, "config", None), "vocab_size", None)),
                       ("output vocabulary", _vocab_size(student), _vocab_size(teacher))):
        if s is not None and t is not None and int(s) != int(t):
            raise DistillError(f"student and teacher vocabularies differ ({what} {s} vs {t}): cross-tokenizer "
                               "distillation is not supported; use a student with the teacher's tokenizer")
    if student_tokenizer is not None and teacher_tokenizer is not None:
        sv, tv = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
        if sv != tv:
            differ = sorted(set(sv.items()) ^ set(tv.items()), key=str)[:3]
            raise DistillError(f"student and teacher tokenizers differ ({len(sv)} vs {len(tv)} tokens; e.g. "
                               f"{differ}): cross-tokenizer distillation is not supported")


def _takes_position_ids(model: Any) -> bool:
    """Does `model.forward` name a `position_ids` parameter (every HF causal LM does)?"""
    try:
        return "position_ids" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError, AttributeError):
        return False


def _base_and_head(model: Any) -> tuple[nn.Module, nn.Module] | None:
    """The decoder body (final hidden states, final norm applied) and the `lm_head` linear of an HF causal LM whose
    logits are exactly `lm_head(hidden)`; None otherwise (soft-capped or scaled logits, custom modules)."""
    config = getattr(model, "config", None)
    if config is None or any(getattr(config, k, None) not in (None, 1.0)
                             for k in ("final_logit_softcapping", "logit_scale", "logits_scaling")):
        return None
    get_head, get_decoder = getattr(model, "get_output_embeddings", None), getattr(model, "get_decoder", None)
    if not callable(get_head) or not callable(get_decoder):
        return None
    try:
        head, body = get_head(), get_decoder()
    except Exception:  # noqa: BLE001 - a model without the standard layout takes the logits path
        return None
    if not isinstance(head, nn.Linear) or not isinstance(body, nn.Module) or body is model:
        return None
    return body, head


@register_method("lm_kd")
class LMKD(Method):
    Options = LMKDOptions

    def __init__(self, student: nn.Module, teacher: Any, **kwargs: Any) -> None:
        super().__init__(student, teacher, **kwargs)
        o = self.options
        self.rows_fn = divergence_rows(o.divergence, temperature=self.temperature, beta=o.beta,
                                       skew_alpha=o.skew_alpha)
        # (optimizer update, micro-batch within it) of the next training batch: on_step sets the update; micro-batches
        # of one update (gradient accumulation) are counted here, so each gets its own decision and generation seed
        self._update, self._micro = 0, 0
        self.generation_log: list[dict[str, Any]] = []  # one record per generation: who, seed, rows, tokens

    @classmethod
    def check(cls, student: nn.Module, teacher: nn.Module, example_batch: Any, options: dict[str, Any], *,
              extra: Sequence[nn.Module] = ()) -> None:
        # models loaded by distill carry their tokenizer: then the token -> id maps must match too, not only sizes
        check_vocabulary(student, teacher, student_tokenizer=getattr(student, "distill_tokenizer", None),
                         teacher_tokenizer=getattr(teacher, "distill_tokenizer", None))
        opts = LMKDOptions(**options)
        for who, model, needed in (("student", student, opts.on_policy > 0), ("teacher", teacher, opts.seq_kd)):
            if needed and not callable(getattr(model, "generate", None)):
                raise DistillError(f"lm_kd: {'on_policy' if who == 'student' else 'seq_kd'} needs a {who} that can "
                                   "generate (a transformers causal LM)")

    # ---- the loss -------------------------------------------------------------------------------------------------
    def _chunked_parts(self, batch: Any) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module] | None:
        # Training steps only: in eval mode (no backward) the student's full forward runs, so callers that read its
        # output (the HF Trainer's evaluate / compute_metrics) get the logits.
        if self.options.head == "logits" or not self.training:
            return None
        teacher_model = getattr(self.teacher, "model", None)
        s, t = _base_and_head(self.student), _base_and_head(teacher_model) if teacher_model is not None else None
        if s is None or t is None:
            if self.options.head == "chunked":
                raise DistillError("lm_kd head: chunked needs transformers causal LMs with an lm_head (logits = "
                                   "lm_head(hidden)) and a live teacher; use head: logits")
            return None
        return (*s, *t)

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        labels = labels_of(batch)  # next-token targets (prepare_batch), -100 = none
        soft_w, hard_w = self.alpha * self.temperature**2, 1.0 - self.alpha
        parts = self._chunked_parts(batch)
        if parts is not None:
            s_body, s_head, t_body, t_head = parts
            inputs = dict(inputs_of(batch))
            hidden = s_body(**inputs, use_cache=False).last_hidden_state
            teacher_autocast = getattr(self.teacher, "autocast", None)
            with torch.no_grad(), torch.autocast(device_type=hidden.device.type, dtype=teacher_autocast,
                                                 enabled=teacher_autocast is not None):
                t_body.eval()
                t_hidden = t_body(**inputs, use_cache=False).last_hidden_state
            mask = token_mask(batch, hidden)
            loss, soft, hard = chunked_head_loss(
                hidden, s_head, t_hidden, t_head, self.rows_fn, labels=labels if hard_w else None, mask=mask,
                soft_weight=soft_w, hard_weight=hard_w, chunk_size=self.options.chunk_size or "auto")
            return {"loss": loss, "soft": soft, "hard": hard}
        student = forward_logits(self.student, inputs_of(batch))  # (B, T, V)
        teacher = self.teacher(batch)
        mask = token_mask(batch, student)
        chunk = self.options.chunk_size
        soft = sequence_divergence(student, teacher, self.rows_fn, mask=mask, chunk_size=chunk)
        if not hard_w:
            hard = student.float().sum() * 0.0
        elif chunk is None:
            hard = hard_loss(student, labels, mask=mask)
        else:
            hard = chunked_cross_entropy(student, labels, mask=mask, chunk_size=chunk)
        loss = soft_w * soft + hard_w * hard
        return {"loss": loss, "soft": soft.detach(), "hard": hard.detach()}

    # ---- training modes: the batch a step trains on ---------------------------------------------------------------
    def on_step(self, done: int, total: int) -> None:
        # the loop calls this once per update, the HF Trainer once per micro-batch: only a new update resets the count
        if done != self._update:
            self._update, self._micro = done, 0

    def prepare_batch(self, batch: Any) -> Any:
        """Update n's batch (micro-batch m of it): with `seq_kd` the teacher's completions of its prompts; with
        probability λ (decided by `seed`, n and m alone, so a resumed run decides as the uninterrupted one) the
        student's."""
        o = self.options
        # Mapping, not dict: HF collators give a BatchEncoding (a UserDict)
        if self.training and isinstance(batch, Mapping) and not batch.get(SHIFTED_KEY):
            step = (self._update, self._micro)
            self._micro += 1
            if o.seq_kd:
                teacher_model = getattr(self.teacher, "model", None)
                if teacher_model is None:
                    raise DistillError("lm_kd seq_kd: the teacher must run live (not from a cache) to generate")
                batch = self._complete(teacher_model, batch, "teacher", step)
            if o.on_policy > 0 and random.Random(_key(o.seed, step)).random() < o.on_policy:
                if getattr(self.teacher, "model", None) is None:
                    raise DistillError("lm_kd on_policy: the teacher must run live (not from a cache) to score the "
                                       "student's completions")
                batch = self._complete(self.student, batch, "student", step)
        return super().prepare_batch(batch)

    def _complete(self, model: nn.Module, batch: Mapping, who: str, step: tuple[int, int] = (0, 0)) -> dict:
        """The batch's prompts (each row's leading -100-labelled real tokens), left-padded, completed by `model`'s
        `generate`; labels are the generated tokens (-100 on prompts, padding and everything after an EOS)."""
        ids, attention = batch["input_ids"], batch.get("attention_mask")
        attention = torch.ones_like(ids) if attention is None else attention
        labels = batch.get("labels")
        real = attention.bool()
        if labels is not None and labels.shape == ids.shape:
            labelled = (labels != IGNORE_INDEX) & real
            # the prompt's length in *real* tokens: those before the first label (rows may be left-padded)
            before_first = real & (labelled.long().cumsum(1) == 0)
            first = torch.where(labelled.any(1), before_first.sum(1), real.sum(1))
        else:
            first = real.sum(1)
        config = getattr(model, "config", None)
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = eos if eos is not None else getattr(config, "eos_token_id", None)
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else []))
        pad = getattr(config, "pad_token_id", None)
        pad = pad if pad is not None else (min(eos_ids) if eos_ids else 0)
        width = int(first.max().clamp(min=1))
        context = getattr(config, "max_position_embeddings", None)
        if context is not None and width + self.options.max_new_tokens > int(context):
            raise DistillError(f"lm_kd: a prompt of {width} tokens + max_new_tokens {self.options.max_new_tokens} "
                               f"exceeds the {who}'s context of {context} tokens; shorten the prompts or lower "
                               "distill.options.max_new_tokens")
        prompts = torch.full((ids.shape[0], width), pad, dtype=ids.dtype, device=ids.device)
        prompt_mask = torch.zeros_like(prompts)
        for i in range(ids.shape[0]):  # left-pad each row's prompt (its real tokens before the first label)
            row = ids[i][real[i]][: int(first[i])]
            if row.numel():
                prompts[i, width - row.numel():] = row
                prompt_mask[i, width - row.numel():] = 1
        update, micro = step
        if micro == 0:  # recorded in generation_log
            seed = self.options.seed + 2 * update + (who == "student")
        else:  # a later micro-batch of the same update: its own seed, fixed by (seed, update, micro, who)
            seed = random.Random(f"{_key(self.options.seed, step)}:{who}").randrange(2**31)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[ids.device] if ids.device.type == "cuda" else []):
                torch.manual_seed(seed)
                out = model.generate(input_ids=prompts, attention_mask=prompt_mask, do_sample=True, top_k=0,
                                     temperature=self.options.gen_temperature,
                                     max_new_tokens=self.options.max_new_tokens, pad_token_id=pad)
        finally:
            model.train(was_training)
        new = out[:, width:]
        alive = torch.ones_like(new, dtype=torch.bool)
        if eos_ids:  # tokens after the first EOS are padding (the EOS itself is a target)
            is_eos = torch.isin(new, torch.tensor(sorted(eos_ids), device=new.device))
            alive = (is_eos.long().cumsum(1) - is_eos.long()) == 0
        new_labels = new.masked_fill(~alive, IGNORE_INDEX)
        self.generation_log.append({"by": who, "step": update, "micro": micro, "seed": seed,
                                    "rows": int(ids.shape[0]), "new_tokens": int(alive.sum())})
        attention_mask = torch.cat([prompt_mask, alive.long()], 1)
        out = {
            **{k: batch[k] for k in ("index", "view") if k in batch},
            "input_ids": torch.cat([prompts, new], 1),
            "attention_mask": attention_mask,
            "labels": torch.cat([torch.full_like(prompts, IGNORE_INDEX), new_labels], 1),
        }
        # Left-padded rows: each real token's position counts from the row's first real token, as `generate` numbered
        # them. Models with absolute position embeddings (GPT-2) need them given; RoPE models are shift-invariant.
        teacher_model = getattr(self.teacher, "model", None)
        if all(_takes_position_ids(m) for m in (self.student, teacher_model) if m is not None):
            out["position_ids"] = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
        return out


def _key(seed: int, step: tuple[int, int]) -> str:
    """The random key of update n's micro-batch m: `seed:n` for the first (as without accumulation), `seed:n:m` after."""
    update, micro = step
    return f"{seed}:{update}" if micro == 0 else f"{seed}:{update}:{micro}"

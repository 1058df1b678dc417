"""Causal-LM evaluation beyond `evaluate.lm_metrics`: forward and generation speed (tokens/s) and greedy
generations for side-by-side comparison. Generation is the model's own `generate` on left-padded prompts."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .evaluate import timed_runs


def _left_padded(prompts: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _eos_ids(eos: Any) -> set[int]:
    """End-of-sequence ids from an `eos_token_id` that may be None, an int or a list of ints (generation configs)."""
    if eos is None:
        return set()
    if isinstance(eos, (list, tuple, set)):
        return {int(e) for e in eos if e is not None}
    if isinstance(eos, torch.Tensor):
        return {int(e) for e in eos.flatten().tolist()}
    return {int(eos)}


@torch.inference_mode()
def greedy_generations(model: nn.Module, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, pad: int,
                       tokenizer: Any = None) -> list[Any]:
    """Greedy continuations of `prompts` (token ids), cut after the first end-of-sequence token (any id the tokenizer's,
    the model's generation config's or config's `eos_token_id` names: each an int or a list of ids): decoded text when a
    `tokenizer` is given, else the new token ids."""
    if not prompts:
        return []
    was_training = model.training
    model.eval()
    # every end-of-sequence id any of them names (a chat model's generation config often lists several)
    eos_ids = set().union(*(_eos_ids(getattr(source, "eos_token_id", None)) for source in
                            (tokenizer, getattr(model, "generation_config", None), getattr(model, "config", None))))
    eos = sorted(eos_ids)
    eos = eos[0] if len(eos) == 1 else (eos or None)
    try:
        ids, mask = _left_padded(prompts, pad)
        out = model.generate(input_ids=ids.to(_device(model)), attention_mask=mask.to(_device(model)),
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, eos_token_id=eos)
    finally:
        model.train(was_training)
    rows = []
    for row in out[:, ids.shape[1]:].tolist():
        ends = [i for i, token in enumerate(row) if token in eos_ids]
        if ends:
            row = row[: ends[0] + 1]
        rows.append(tokenizer.decode(row, skip_special_tokens=True) if tokenizer is not None else row)
    return rows


def _seconds(fn: Any, runs: int) -> list[float]:
    fn()  # warm-up
    return timed_runs(fn, runs)


@torch.inference_mode()
def lm_speed(model: nn.Module, prompts: Sequence[Sequence[int]], *, threads: int = 1, new_tokens: int = 32,
             runs: int = 3, pad: int = 0) -> dict[str, float]:
    """Speed of a causal LM on CPU with `torch.set_num_threads(threads)` (restored), median of `runs` calls after a
    warm-up: `forward_tokens_per_s` (real prompt tokens of one left-padded batch of `prompts` per second),
    `generate_tokens_per_s` (greedy `generate` of exactly `new_tokens` tokens per prompt, KV cache on, new tokens per
    second), and `latency_ms_p50` / `_p95` (one forward of the first prompt alone, at least 5 timed calls)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    was_training = model.training
    model.eval()
    try:
        ids, mask = _left_padded(prompts, pad)
        real = int(mask.sum())
        forward = statistics.median(_seconds(lambda: model(input_ids=ids, attention_mask=mask), runs))
        one = torch.tensor([list(prompts[0])])
        latency = np.array(_seconds(lambda: model(input_ids=one), max(runs, 5))) * 1000.0
        gen = statistics.median(_seconds(lambda: model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                                     min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad),
                              runs))
    finally:
        torch.set_num_threads(previous)
        model.train(was_training)
    return {"forward_tokens_per_s": real / forward, "generate_tokens_per_s": len(prompts) * new_tokens / gen,
            "latency_ms_p50": float(np.percentile(latency, 50)), "latency_ms_p95": float(np.percentile(latency, 95))}

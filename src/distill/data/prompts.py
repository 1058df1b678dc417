"""Prompts shipped with the package and the teacher's own greedy answers to them: distillation text on which the
teacher is the better model (its own outputs), for sequence-level KD and the SmolLM2 recipe.

`recipes/smollm2-prompts.txt` holds 225 short, varied instructions written for this project (explanations, how-tos,
lists, short writing, comparisons, definitions, arithmetic, general knowledge, small coding questions, rewriting,
advice), one per line. `teacher_answers` formats each with the tokenizer's chat template, lets the teacher answer
greedily with its own `generate`, and stores prompt and answer token ids in a directory:
`answers.safetensors` (all sequences concatenated, `offsets`, `prompt_lengths`) and `manifest.json`, written last,
recording how they were made (teacher identity, prompt-file SHA-256, decoding settings, seed, batch size). Called
again with the same directory and settings it loads instead of generating; other settings are refused in one line
(the seed is one of them only when decoding samples: greedy answers do not depend on it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from ..errors import DistillError
from ..files import write_json_atomic
from ..models import create_model
from ..teachers.lm_cache import teacher_identity
from ._registry import DataBundle, register_dataset

PROMPTS_FILE = Path(__file__).resolve().parents[1] / "recipes" / "smollm2-prompts.txt"
FORMAT = "distill-teacher-answers"
FILE, MANIFEST = "answers.safetensors", "manifest.json"


def load_prompts(path: str | Path | None = None) -> list[str]:
    """The prompts in `path` (default: the packaged SmolLM2 prompts), one per line; `#` lines and blanks skipped."""
    path = Path(path) if path is not None else PROMPTS_FILE
    if not path.is_file():
        raise DistillError(f"prompt file {str(path)!r} not found; give a text file with one prompt per line")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise DistillError(f"prompt file {str(path)!r} has no prompts (one per line; '#' starts a comment)")
    return prompts


def split_prompts(prompts: Sequence[str], *, held_out: float = 0.1, seed: int = 0) -> tuple[list[str], list[str]]:
    """A seeded (train, held-out) split; the held-out prompts' answers measure NLL and fidelity on unseen text."""
    if not 0 < held_out < 1:
        raise DistillError(f"held_out={held_out} must be a fraction in (0, 1)")
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed)).tolist()
    n = max(1, round(held_out * len(prompts)))
    return [prompts[i] for i in sorted(order[n:])], [prompts[i] for i in sorted(order[:n])]


@dataclass
class TeacherAnswers:
    """Prompt and answer token ids per prompt; `manifest` says how they were made."""

    prompts: list[str]
    prompt_ids: list[list[int]]
    answer_ids: list[list[int]]
    manifest: dict[str, Any] = field(default_factory=dict)

    def sequences(self) -> list[list[int]]:
        """Prompt + answer token ids per prompt (what a causal LM reads)."""
        return [p + a for p, a in zip(self.prompt_ids, self.answer_ids)]

    def answer_masks(self) -> list[list[bool]]:
        """Per sequence, True on answer tokens (the distillation targets; prompt tokens are context only)."""
        return [[False] * len(p) + [True] * len(a) for p, a in zip(self.prompt_ids, self.answer_ids)]

    def target_masks(self) -> list[list[bool]]:
        """Per sequence, True at the positions whose *next* token is an answer token: where a causal LM's
        prediction (and a logit cache's entry, which is aligned with positions) is a distillation target."""
        return [m[1:] + [False] for m in self.answer_masks()]

    @property
    def num_answer_tokens(self) -> int:
        return sum(map(len, self.answer_ids))


def _prompt_ids(tokenizer: Any, prompt: str, system: str | None) -> list[int]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def _settings(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], **kwargs: Any) -> dict[str, Any]:
    identity = teacher_identity(model, tokenizer)
    digest = hashlib.sha256("\n".join(prompts).encode()).hexdigest()
    return {**identity, "prompts_sha256": digest, "num_prompts": len(prompts), "decoding": "greedy", **kwargs}


def teacher_answers(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    out: str | Path | None = None,
    max_new_tokens: int = 64,
    system: str | None = None,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    rebuild: bool = False,
) -> TeacherAnswers:
    """The teacher's greedy answers to `prompts` (chat template applied), at most `max_new_tokens` tokens each,
    ending with the end-of-sequence token when the teacher stopped. Batches are left-padded (`batch_size` is
    recorded: padding can change a float32 argmax in rare ties). With `out`, stored there and reused next time."""
    if not prompts:
        raise DistillError("no prompts to answer; pass at least one")
    if not 1 <= max_new_tokens <= 4096 or batch_size < 1:
        raise DistillError(f"max_new_tokens={max_new_tokens} must be in [1, 4096] and batch_size={batch_size} >= 1")
    settings = _settings(model, tokenizer, prompts, max_new_tokens=max_new_tokens, system=system,
                         batch_size=batch_size)
    if settings["decoding"] != "greedy":  # only sampling draws random numbers: the seed then decides the answers
        settings["seed"] = seed
    if out is not None and (Path(out) / MANIFEST).is_file() and not rebuild:
        return _load(Path(out), list(prompts), settings)
    ids = [_prompt_ids(tokenizer, p, system) for p in prompts]
    context = getattr(model.config, "max_position_embeddings", None)
    longest = max(range(len(ids)), key=lambda i: len(ids[i]))
    if context is not None and len(ids[longest]) + max_new_tokens > context:
        raise DistillError(
            f"prompt {longest} is {len(ids[longest])} tokens; with max_new_tokens={max_new_tokens} it exceeds the "
            f"teacher's context of {context} tokens — shorten it or lower max_new_tokens"
        )
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    answers: list[list[int]] = []
    starts = range(0, len(ids), batch_size)
    if progress:
        from rich.progress import track

        starts = track(starts, description="teacher answering prompts")
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):  # the caller's RNG state is left as it was
            torch.manual_seed(seed)  # greedy decoding draws nothing; recorded so sampled variants stay reproducible
            _generate(model, ids, answers, starts, batch_size, pad, eos, max_new_tokens)
    finally:
        model.train(was_training)
    result = TeacherAnswers(list(prompts), ids, answers, {**settings, "seed": seed, "how": (
        "each prompt formatted with the tokenizer's chat template (add_generation_prompt), answered by the teacher's "
        "own generate() with greedy decoding, cut after its first end-of-sequence token")})
    if out is not None:
        _save(Path(out), result)
    return result


def _generate(model: torch.nn.Module, ids: list[list[int]], answers: list[list[int]], starts: Any, batch_size: int,
              pad: int, eos: int, max_new_tokens: int) -> None:
    """Greedy answers for left-padded batches of prompt ids, appended to `answers` (cut after the first EOS)."""
    for start in starts:
        batch = ids[start : start + batch_size]
        width = max(map(len, batch))
        input_ids = torch.tensor([[pad] * (width - len(b)) + b for b in batch])
        attention = torch.tensor([[0] * (width - len(b)) + [1] * len(b) for b in batch])
        with torch.inference_mode():
            generated = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                                       do_sample=False, pad_token_id=pad, eos_token_id=eos)
        for row in generated[:, width:].tolist():
            answers.append(row[: row.index(eos) + 1] if eos in row else row)


def _save(out: Path, answers: TeacherAnswers) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    seqs = answers.sequences()
    arrays = {
        "tokens": np.array([t for s in seqs for t in s], dtype=np.int32),
        "offsets": np.cumsum([0] + [len(s) for s in seqs]).astype(np.int64),
        "prompt_lengths": np.array([len(p) for p in answers.prompt_ids], dtype=np.int64),
    }
    save_file(arrays, str(out / f".{FILE}.tmp"))
    os.replace(out / f".{FILE}.tmp", out / FILE)
    doc = {"format": FORMAT, "version": 1, **answers.manifest, "num_answer_tokens": answers.num_answer_tokens,
           "prompts": answers.prompts, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    write_json_atomic(out / MANIFEST, doc)  # written last: a manifest means complete answers


def _load(out: Path, prompts: list[str], settings: dict[str, Any]) -> TeacherAnswers:
    try:
        doc = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        arrays = load_file(str(out / FILE))
        offsets, lengths, tokens = arrays["offsets"], arrays["prompt_lengths"], arrays["tokens"].tolist()
    except (OSError, ValueError, UnicodeDecodeError, SafetensorError, KeyError) as exc:
        raise DistillError(f"teacher answers in {str(out)!r} are unreadable ({' '.join(str(exc).split())[:120]}); "
                           "regenerate with rebuild=True") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DistillError(f"{str(out)!r} does not hold teacher answers; choose another directory")
    for key, value in settings.items():
        if doc.get(key) != value:
            raise DistillError(
                f"teacher answers in {str(out)!r} were made with another {key} ({str(doc.get(key))[:24]!r}); "
                "regenerate them with rebuild=True or choose another directory"
            )
    seqs = [tokens[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]
    return TeacherAnswers(prompts, [s[:n] for s, n in zip(seqs, lengths)], [s[n:] for s, n in zip(seqs, lengths)], doc)


class AnswerDataset(torch.utils.data.Dataset):
    """Prompt + answer token sequences of a causal LM: `input_ids`, `attention_mask`, and `labels` (the ids, -100 on
    prompt tokens: only the answer is a target). `collate_fn` right-pads a batch (id `pad`, attention 0, label -100)."""

    def __init__(self, answers: TeacherAnswers, rows: Sequence[int], pad: int) -> None:
        self.rows = [(answers.prompt_ids[i], answers.answer_ids[i]) for i in rows]
        self.prompts = [answers.prompts[i] for i in rows]
        self.pad = pad

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        prompt, answer = self.rows[i]
        ids = torch.tensor(prompt + answer, dtype=torch.long)
        labels = ids.clone()
        labels[: len(prompt)] = -100
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    def collate_fn(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        width = max(int(it["input_ids"].shape[0]) for it in items)
        fill = {"input_ids": self.pad, "attention_mask": 0, "labels": -100}
        out: dict[str, torch.Tensor] = {}
        for key in items[0]:
            if key in fill:
                out[key] = torch.stack([torch.nn.functional.pad(it[key], (0, width - it[key].shape[0]), value=fill[key])
                                        for it in items])
            else:
                out[key] = torch.stack([torch.as_tensor(it[key]) for it in items])
        return out


@register_dataset("teacher-answers")
def teacher_answers_dataset(
    *, seed: int = 0, teacher: str = "smollm2-135m", teacher_kwargs: dict[str, Any] | None = None,
    prompts: str | None = None, num_prompts: int | None = None, val_fraction: float = 0.1, test_fraction: float = 0.2,
    max_new_tokens: int = 48, batch_size: int = 16, system: str | None = None, cache_dir: str | None = None,
    progress: bool = True,
) -> DataBundle:
    """A causal LM's own greedy answers to a prompt file (default: the packaged SmolLM2 prompts), split by prompt
    into train / val / test (seeded; val and test prompts are never trained on). The teacher (`teacher`,
    `teacher_kwargs`: a registered model, normally the recipe's teacher) answers every prompt once
    (`teacher_answers`); with `cache_dir` the answers are stored there and reused by later runs with the same
    settings. Labels are -100 on prompt tokens. Raises `DistillError` for a prompt longer than the teacher's context
    or generation settings out of range."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DistillError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in (0, 1) and sum "
                           "to less than 1")
    texts = load_prompts(prompts)
    if num_prompts is not None:
        if num_prompts < 3:
            raise DistillError(f"num_prompts={num_prompts} must be at least 3 (train, val and test prompts)")
        texts = texts[:num_prompts]
    model = create_model(teacher, input_shape=(), num_classes=0, **(teacher_kwargs or {}))
    tokenizer = getattr(model, "distill_tokenizer", None)
    if tokenizer is None:
        raise DistillError(f"teacher {teacher!r} has no tokenizer; the teacher-answers dataset needs a causal LM")
    answers = teacher_answers(model, tokenizer, texts, out=cache_dir, max_new_tokens=max_new_tokens, system=system,
                              seed=seed, batch_size=batch_size, progress=progress)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    vocab = int(model.config.vocab_size)
    del model
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    n_test = max(1, round(test_fraction * len(texts)))
    n_val = max(1, round(val_fraction * len(texts)))
    test, val, train = sorted(order[:n_test]), sorted(order[n_test : n_test + n_val]), sorted(order[n_test + n_val :])
    if not train:
        raise DistillError(f"{len(texts)} prompts leave none for training; give more prompts or smaller fractions")
    longest = max(len(p) + len(a) for p, a in zip(answers.prompt_ids, answers.answer_ids))
    return DataBundle(AnswerDataset(answers, train, pad), AnswerDataset(answers, val, pad),
                      AnswerDataset(answers, test, pad), vocab, (longest,))

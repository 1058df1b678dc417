"""The packaged prompts and the teacher's greedy answers to them (tiny random Llama teacher)."""

from __future__ import annotations

import pytest
import torch

from distill.data.prompts import load_prompts, split_prompts, teacher_answers
from distill.errors import DistillError

pytest.importorskip("transformers")
from lm_fixtures import SpaceTokenizer, tiny_llama  # noqa: E402


def test_packaged_prompts() -> None:
    prompts = load_prompts()
    assert len(prompts) >= 200 and len(set(prompts)) == len(prompts)
    assert not any(p.startswith("#") for p in prompts) and max(map(len, prompts)) < 200
    train, held = split_prompts(prompts, held_out=0.1, seed=0)
    assert len(held) == 22 and not set(train) & set(held) and len(train) + len(held) == len(prompts)
    assert split_prompts(prompts, seed=0) == (train, held) and split_prompts(prompts, seed=1)[1] != held


def test_teacher_answers_are_its_greedy_continuations_and_are_stored(tmp_path) -> None:
    teacher, tok = tiny_llama(seed=0), SpaceTokenizer()
    prompts = ["say hello", "what is two plus two please", "list colours"]
    answers = teacher_answers(teacher, tok, prompts, out=tmp_path / "a", max_new_tokens=6, batch_size=2, progress=False)
    for prompt, p_ids, a_ids in zip(prompts, answers.prompt_ids, answers.answer_ids):
        assert p_ids == tok(prompt)["input_ids"]
        # left-padded batched greedy decoding gives what one unpadded greedy decode gives
        alone = teacher.generate(torch.tensor([p_ids]), max_new_tokens=6, do_sample=False, pad_token_id=0,
                                 eos_token_id=2)[0, len(p_ids):].tolist()
        alone = alone[: alone.index(2) + 1] if 2 in alone else alone
        assert a_ids == alone and 1 <= len(a_ids) <= 6
    assert answers.sequences()[0] == answers.prompt_ids[0] + answers.answer_ids[0]
    assert sum(map(sum, answers.answer_masks())) == answers.num_answer_tokens
    # the prediction at position t targets token t + 1: the last prompt position predicts the first answer token
    targets = answers.target_masks()
    assert sum(map(sum, targets)) == answers.num_answer_tokens
    n = len(answers.prompt_ids[0])
    assert targets[0][n - 1] and not targets[0][-1] and not any(targets[0][: n - 1])
    again = teacher_answers(teacher, tok, prompts, out=tmp_path / "a", max_new_tokens=6, batch_size=2, progress=False)
    assert again.answer_ids == answers.answer_ids and again.manifest["decoding"] == "greedy"
    assert "chat template" in again.manifest["how"] and again.manifest["teacher_sha256"]
    with pytest.raises(DistillError, match="another max_new_tokens"):
        teacher_answers(teacher, tok, prompts, out=tmp_path / "a", max_new_tokens=7, batch_size=2, progress=False)
    # a damaged store is one line, never a traceback: a corrupt safetensors file, a manifest that is not an object
    (tmp_path / "a" / "answers.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(DistillError, match="unreadable"):
        teacher_answers(teacher, tok, prompts, out=tmp_path / "a", max_new_tokens=6, batch_size=2, progress=False)
    (tmp_path / "a" / "manifest.json").write_text("[1, 2]")
    with pytest.raises(DistillError):
        teacher_answers(teacher, tok, prompts, out=tmp_path / "a", max_new_tokens=6, batch_size=2, progress=False)
    with pytest.raises(DistillError, match="exceeds the teacher's context of 128"):
        teacher_answers(teacher, tok, ["word " * 125], max_new_tokens=4, progress=False)
    with pytest.raises(DistillError, match="max_new_tokens"):
        teacher_answers(teacher, tok, prompts, max_new_tokens=0, progress=False)


def test_teacher_answers_leave_the_callers_rng_alone() -> None:
    teacher = tiny_llama(seed=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    teacher_answers(teacher, SpaceTokenizer(), ["hi there"], max_new_tokens=2, seed=7, progress=False)
    assert torch.equal(torch.rand(3), expected)

"""Review fixes from issue 10, each with the case that was wrong: completions scored with the positions `generate`
gave them (GPT-2, absolute positions, left-padded prompts); greedy generations cut at an EOS given as a list; a
teacher-answers store that ignores the seed under greedy decoding; the MiniLM memo keyed by the files, not the path;
tied weights stored once (saved weights and exports) and tied again on load."""

from __future__ import annotations

import copy

import pytest
import torch

from distill.batch import IGNORE_INDEX, SHIFTED_KEY
from distill.methods import build_method
from distill.teachers import LiveTeacher

pytest.importorskip("transformers")
from lm_models import lm_batch  # noqa: E402


def tiny_gpt2(*, hidden: int = 32, layers: int = 2, seed: int = 0, vocab: int = 40) -> torch.nn.Module:
    """A `GPT2LMHeadModel` (learned absolute position embeddings) without dropout, random init."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab, n_positions=64, n_embd=hidden, n_layer=layers, n_head=4, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)


def right_aligned(batch: dict) -> dict:
    """Each row's real tokens moved to the front (right padding), no position ids: what a left-padded row means.
    The labels are already next-token targets (shifted within the row), so they move with their tokens."""
    mask = batch["attention_mask"].bool()
    out = {k: torch.zeros_like(batch[k]) for k in ("input_ids", "attention_mask")}
    out["labels"] = torch.full_like(batch["labels"], IGNORE_INDEX)
    for i in range(mask.shape[0]):
        n = int(mask[i].sum())
        first = int(mask[i].long().argmax())  # real tokens are contiguous: the left-padded prompt, then the answer
        for k in out:
            out[k][i, :n] = batch[k][i, first:first + n]
    out[SHIFTED_KEY] = True
    return out


@pytest.mark.parametrize("head", ["logits", "chunked"])
@pytest.mark.parametrize("mode", [{"on_policy": 1.0}, {"seq_kd": True}])
def test_completions_are_scored_at_their_generated_positions(head: str, mode: dict) -> None:
    """A left-padded completion batch scores like the same rows right-padded: the loss must not depend on how far a
    short prompt was shifted right. GPT-2's learned absolute positions make it depend unless the batch carries
    position ids counted from each row's first real token."""
    student, teacher = tiny_gpt2(seed=0), tiny_gpt2(hidden=48, seed=1)
    batch = lm_batch(batch=3, length=8, prompt=2)
    batch["labels"][1, :6] = -100  # a 6-token prompt next to 2-token ones: rows 0 and 2 are left-padded by 4
    method = build_method("lm_kd", copy.deepcopy(student), LiveTeacher(teacher, tune=False), temperature=1.0,
                          alpha=0.5, options={**mode, "head": head, "max_new_tokens": 5, "seed": 3})
    method.train()
    completed = method.prepare_batch(batch)  # the completions, labels already next-token targets
    assert bool((completed["attention_mask"][0, :4] == 0).all())  # really left-padded
    got = method(completed)
    want = method(right_aligned(completed))
    for key in ("loss", "soft", "hard"):
        torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-5, msg=lambda m: f"{key}: {m}")


class FixedGenerator(torch.nn.Module):
    """`generate` returns the prompts followed by fixed new tokens; the EOS ids come from the generation config."""

    def __init__(self, new: list[list[int]], eos) -> None:
        super().__init__()
        from transformers import GenerationConfig, PretrainedConfig

        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.new = torch.tensor(new)
        self.generation_config = GenerationConfig(eos_token_id=eos)
        self.config = PretrainedConfig()
        self.seen_eos = None

    def generate(self, input_ids, attention_mask, max_new_tokens, do_sample, pad_token_id, eos_token_id):
        self.seen_eos = eos_token_id
        return torch.cat([input_ids, self.new[:, :max_new_tokens]], 1)


@pytest.mark.parametrize("eos,want", [([2, 3], [[5, 3], [6, 7, 2], [8, 9, 9, 9, 9]]),
                                      (2, [[5, 3, 7, 2], [6, 7, 2], [8, 9, 9, 9, 9]])])
def test_greedy_generations_cut_at_any_eos_of_a_list(eos, want) -> None:
    from distill.engine.lm_eval import greedy_generations

    model = FixedGenerator([[5, 3, 7, 2, 9], [6, 7, 2, 3, 4], [8, 9, 9, 9, 9]], eos)
    got = greedy_generations(model, [[11, 12], [13], [14, 15, 16]], max_new_tokens=5, pad=0)
    assert got == want and model.seen_eos == eos


def test_greedy_teacher_answers_are_reused_under_another_seed(tmp_path, monkeypatch) -> None:
    """Greedy decoding draws no random numbers: a store made with seed 0 serves seed 5 (a run with another seed)
    instead of refusing it; the manifest keeps the seed it was made with. Other settings are still refused."""
    from lm_fixtures import SpaceTokenizer, tiny_llama

    from distill.data import prompts as prompts_module
    from distill.errors import DistillError

    teacher, tok = tiny_llama(seed=0, layers=2), SpaceTokenizer()
    prompts = ["say hello", "list colours"]
    first = prompts_module.teacher_answers(teacher, tok, prompts, out=tmp_path / "a", max_new_tokens=4, seed=0,
                                           progress=False)
    monkeypatch.setattr(prompts_module, "_generate", lambda *a, **k: pytest.fail("regenerated instead of reusing"))
    again = prompts_module.teacher_answers(teacher, tok, prompts, out=tmp_path / "a", max_new_tokens=4, seed=5,
                                           progress=False)
    assert again.answer_ids == first.answer_ids and again.manifest["seed"] == 0 == first.manifest["seed"]
    with pytest.raises(DistillError, match="another max_new_tokens"):
        prompts_module.teacher_answers(teacher, tok, prompts, out=tmp_path / "a", max_new_tokens=5, seed=5,
                                       progress=False)


def test_minilm_memo_rereads_a_directory_whose_files_changed(tmp_path) -> None:
    """The encoder memo is keyed by the directory's files (names, sizes, mtimes), not its path: a model saved again
    into the same directory is what the next load returns; an unchanged directory is still read once."""
    import os

    from transformers import BertConfig, BertModel

    from distill.models import minilm

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(BertModel(config).eval())
    directory = tmp_path / "encoder"
    models[0].save_pretrained(directory)
    first = minilm.load_encoder(str(directory))
    torch.testing.assert_close(first.state_dict(), models[0].state_dict())
    calls = []
    real = minilm._from_pretrained
    minilm._from_pretrained = lambda d: calls.append(d) or real(d)
    try:
        assert minilm.load_encoder(str(directory)) is not first and not calls  # memo hit: a copy, no read
        models[1].save_pretrained(directory)
        weights = directory / "model.safetensors"
        stat = weights.stat()
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later mtime even on coarse clocks
        second = minilm.load_encoder(str(directory))
    finally:
        minilm._from_pretrained = real
    torch.testing.assert_close(second.state_dict(), models[1].state_dict())
    assert len(calls) == 1
    assert sum(k[0] == str(directory.resolve()) for k in minilm._LOADED) == 1  # the old contents are dropped


def test_tied_weights_are_saved_once_and_tied_again_on_load(tmp_path) -> None:
    """A tied LM (output head = input embeddings) is written with its embedding once — about half the bytes when the
    embedding dominates — and loads back tied, with equal outputs; a file holding both copies (older artifacts)
    still loads."""
    from lm_models import tiny_llama
    from safetensors.torch import save_file

    from distill.engine.io import load_weights, save_weights, state_bytes

    model = tiny_llama(hidden=16, layers=1, vocab=2000, seed=0, tied=True).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    everything = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    once = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
        b.numel() * b.element_size() for b in model.buffers() if b is not None)
    path = save_weights(model, tmp_path / "student.safetensors")
    size = path.stat().st_size
    assert everything > 1.9 * once  # the embedding is most of the model: a copy nearly doubles it
    assert once <= size < once + 4096 and size < 0.55 * everything
    assert len(state_bytes(model)) == size
    fresh = tiny_llama(hidden=16, layers=1, vocab=2000, seed=1, tied=True).eval()
    load_weights(fresh, path)
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight
    ids = torch.tensor([[5, 1500, 7, 1999]])
    torch.testing.assert_close(fresh(input_ids=ids).logits, model(input_ids=ids).logits, atol=0, rtol=0)
    old_style = tmp_path / "old.safetensors"  # every tensor written out, as before this fix
    save_file({k: v.detach().clone() for k, v in model.state_dict().items()}, str(old_style))
    again = load_weights(tiny_llama(hidden=16, layers=1, vocab=2000, seed=2, tied=True).eval(), old_style)
    assert again.lm_head.weight is again.model.embed_tokens.weight
    torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits, atol=0, rtol=0)


def test_exporting_a_tied_model_writes_it_once_and_reads_back_tied(tmp_path) -> None:
    """`distill export --format safetensors` of a tied LM student: it used to fail (safetensors refuses shared
    tensors); now the embedding is written once, the header keeps the distill metadata, and the reader ties it."""
    from lm_models import tiny_llama

    from distill.compress.export import read_metadata, save_safetensors
    from distill.engine.io import read_state_dict

    model = tiny_llama(hidden=16, layers=1, vocab=2000, seed=0, tied=True).eval()
    meta = {"architecture": "causal-lm-student", "kwargs": {}}
    path = save_safetensors(model, tmp_path / "student.safetensors", meta)
    assert read_metadata(path) == meta
    assert path.stat().st_size < 0.55 * sum(v.numel() * v.element_size() for v in model.state_dict().values())
    fresh = tiny_llama(hidden=16, layers=1, vocab=2000, seed=1, tied=True).eval()
    fresh.load_state_dict(read_state_dict(path), strict=True)
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight
    ids = torch.tensor([[5, 1500, 7, 1999]])
    torch.testing.assert_close(fresh(input_ids=ids).logits, model(input_ids=ids).logits, atol=0, rtol=0)


def test_only_our_alias_entry_is_read_as_tied_weights(tmp_path) -> None:
    """A third-party safetensors header entry whose value happens to name a tensor is not an alias."""
    from safetensors.torch import save_file

    from distill.engine.io import read_state_dict

    save_file({"w": torch.ones(2)}, tmp_path / "x.safetensors", metadata={"note": "w"})
    assert sorted(read_state_dict(tmp_path / "x.safetensors")) == ["w"]


def test_greedy_generations_cut_at_the_tokenizers_and_the_configs_eos_alike() -> None:
    """A tokenizer naming one EOS and a generation config listing others: every one of them ends a generation."""
    from distill.engine.lm_eval import greedy_generations

    class Tok:
        eos_token_id = 9

        def decode(self, ids, skip_special_tokens=True):  # noqa: ANN001, ANN201
            return ids

    model = FixedGenerator([[5, 3, 7, 2, 9], [6, 7, 2, 3, 4], [8, 9, 9, 9, 9]], [3])
    got = greedy_generations(model, [[11, 12], [13], [14, 15, 16]], max_new_tokens=5, pad=0, tokenizer=Tok())
    assert got == [[5, 3], [6, 7, 2, 3], [8, 9]] and model.seen_eos == [3, 9]

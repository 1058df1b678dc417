"""Causal-LM distillation: next-token alignment (one hard-only step equals a step on the model's own `labels` loss),
padding invariance, the chunked lm_head path against the logits path, the vocabulary check, and a few training steps
of each mode (supervised, sequence-level, on-policy) through the Python API on tiny random Llama-style models."""

from __future__ import annotations

import copy

import pytest
import torch

from distill.batch import is_causal_lm, next_token_labels, token_mask
from distill.errors import DistillError
from distill.methods import build_method
from distill.methods.lm_kd import check_vocabulary
from distill.teachers import LiveTeacher

pytest.importorskip("transformers")
from lm_models import LMDataset, RaggedLM, lm_batch, pad_lm, tiny_llama  # noqa: E402


@pytest.fixture(scope="module")
def pair():
    return tiny_llama(hidden=32, layers=2, seed=0), tiny_llama(hidden=48, layers=2, seed=1)


def test_next_token_labels_and_causal_detection(pair) -> None:
    student, _ = pair
    assert is_causal_lm(student)
    from hf_models import tiny_bert
    assert not is_causal_lm(tiny_bert("token"))
    assert not is_causal_lm(torch.nn.Linear(2, 2))
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8, 0], [5, 6, 7, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]),
             "labels": torch.tensor([[-100, -100, 7, 8, -100], [-100, 6, 7, -100, -100]])}
    want = torch.tensor([[-100, 7, 8, -100, -100], [6, 7, -100, -100, -100]])
    assert torch.equal(next_token_labels(batch), want)
    unlabelled = {k: v for k, v in batch.items() if k != "labels"}
    assert torch.equal(next_token_labels(unlabelled), torch.tensor([[6, 7, 8, -100, -100], [6, 7, -100, -100, -100]]))


def one_step(model: torch.nn.Module, loss_fn) -> dict[str, torch.Tensor]:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    opt.zero_grad()
    loss_fn().backward()
    opt.step()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name,options", [("lm_kd", {"head": "logits"}), ("lm_kd", {"head": "chunked"}),
                                          ("lm_kd", {"head": "logits", "chunk_size": None}), ("kd", {})])
def test_hard_only_step_equals_the_models_own_labels_loss(pair, name: str, options: dict) -> None:
    """alpha = 0: one step of our loss is one step on HF's own shifted `labels` loss, to 1e-6 in the weights."""
    student, teacher = pair
    batch = lm_batch(batch=3, length=8, prompt=3)
    ref_model = copy.deepcopy(student)
    want = one_step(ref_model, lambda: ref_model(**batch).loss)  # HF shifts labels itself
    ours = copy.deepcopy(student)
    method = build_method(name, ours, LiveTeacher(teacher, tune=False), temperature=1.0, alpha=0.0, options=options)
    got = one_step(ours, lambda: method(batch)["loss"])
    moved = max(float((want[n] - p.detach()).abs().max()) for n, p in student.named_parameters())
    assert moved > 1e-3  # the step did something
    for n in want:
        torch.testing.assert_close(got[n], want[n], atol=1e-6, rtol=0, msg=lambda m: f"{n}: {m}")


DIVERGENCES = [{"divergence": d} for d in ("forward_kl", "reverse_kl", "tv", "skew_kl", "skew_rkl")] + [
    {"divergence": "jsd", "beta": 0.3}]


@pytest.mark.parametrize("head", ["logits", "chunked"])
@pytest.mark.parametrize("options", DIVERGENCES, ids=lambda o: o["divergence"])
def test_padding_changes_nothing_and_heads_agree(pair, options: dict, head: str) -> None:
    student, teacher = pair
    batch = lm_batch(batch=3, length=8)
    results = []
    for b in (batch, pad_lm(batch, 16)):
        s = copy.deepcopy(student)
        method = build_method("lm_kd", s, LiveTeacher(teacher, tune=False), temperature=2.0, alpha=0.5,
                              options={**options, "head": head, "chunk_size": 5})
        out = method(b)
        out["loss"].backward()
        results.append((out, {n: p.grad.clone() for n, p in s.named_parameters()}))
    (out, grads), (out_pad, grads_pad) = results
    assert out["soft"].item() > 0 and out["hard"].item() > 0
    for key in ("loss", "soft", "hard"):
        torch.testing.assert_close(out_pad[key], out[key], atol=1e-6, rtol=1e-5)
    for n in grads:
        torch.testing.assert_close(grads_pad[n], grads[n], atol=1e-6, rtol=1e-5, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("options", DIVERGENCES, ids=lambda o: o["divergence"])
def test_chunked_head_equals_naive_logits_loss(pair, options: dict) -> None:
    student, teacher = pair
    batch = lm_batch(batch=3, length=8)
    grads = []
    for extra in ({"head": "logits", "chunk_size": None}, {"head": "chunked", "chunk_size": 4}):
        s = copy.deepcopy(student)
        method = build_method("lm_kd", s, LiveTeacher(teacher, tune=False), temperature=1.5, alpha=0.7,
                              options={**options, **extra})
        calls = []
        hook = s.lm_head.register_forward_hook(lambda *a: calls.append(1))
        out = method(batch)
        hook.remove()
        assert bool(calls) == (extra["head"] == "logits")  # the chunked head never builds the logits
        out["loss"].backward()
        grads.append((out["loss"].item(), {n: p.grad.clone() for n, p in s.named_parameters()}))
    assert grads[1][0] == pytest.approx(grads[0][0], abs=1e-6)
    for n in grads[0][1]:
        torch.testing.assert_close(grads[1][1][n], grads[0][1][n], atol=1e-6, rtol=1e-5)


def test_soft_mask_is_next_token_aligned(pair) -> None:
    """Soft terms count exactly the positions whose *next* token is a target."""
    student, _ = pair
    batch = lm_batch(batch=2, length=6, prompt=2)
    method = build_method("lm_kd", student, LiveTeacher(copy.deepcopy(student), tune=False))
    shifted = method.prepare_batch(batch)
    mask = token_mask(shifted, torch.zeros(2, 6, 3))
    assert torch.equal(mask, next_token_labels(batch) != -100)
    assert not bool(mask[:, -1].any()) and not bool(mask[:, 0].any())  # last position; position 0 predicts a prompt token
    assert method.prepare_batch(shifted) is shifted  # idempotent


class FakeTokenizer:
    def __init__(self, vocab: dict[str, int]) -> None:
        self.vocab = vocab

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)


def test_vocabulary_check(pair) -> None:
    from distill.api import Distiller

    student, teacher = pair
    other = tiny_llama(vocab=41, seed=2)
    with pytest.raises(DistillError, match="cross-tokenizer distillation is not supported"):
        check_vocabulary(other, teacher)
    loader = torch.utils.data.DataLoader(LMDataset(4), batch_size=2)
    with pytest.raises(DistillError, match="cross-tokenizer"):
        Distiller(teacher, copy.deepcopy(other), method="lm_kd", progress=False).fit(loader)
    check_vocabulary(student, teacher, student_tokenizer=FakeTokenizer({"a": 0, "b": 1}),
                     teacher_tokenizer=FakeTokenizer({"a": 0, "b": 1}))
    with pytest.raises(DistillError, match="tokenizers differ"):
        check_vocabulary(student, teacher, student_tokenizer=FakeTokenizer({"a": 0, "b": 1}),
                         teacher_tokenizer=FakeTokenizer({"a": 1, "b": 0}))
    with pytest.raises(DistillError, match="beta"):
        Distiller(teacher, student, method="lm_kd", options={"divergence": "jsd", "beta": 1.5}, progress=False)


@pytest.mark.parametrize("options", [
    {"divergence": "forward_kl"},
    {"divergence": "jsd", "beta": 0.5, "head": "logits"},
    {"divergence": "reverse_kl", "on_policy": 1.0, "max_new_tokens": 4},
    {"divergence": "forward_kl", "seq_kd": True, "on_policy": 0.5, "max_new_tokens": 4},
], ids=["supervised", "jsd-logits", "on-policy", "seq-kd-mixture"])
def test_few_steps_through_the_api(options: dict) -> None:
    from distill.api import Distiller

    teacher, student = tiny_llama(hidden=48, seed=1), tiny_llama(hidden=32, seed=0)
    before_t = {n: p.clone() for n, p in teacher.named_parameters()}
    before_s = {n: p.clone() for n, p in student.named_parameters()}
    loader = torch.utils.data.DataLoader(LMDataset(8), batch_size=4, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    d = Distiller(teacher, student, method="lm_kd", options=options, temperature=1.0, alpha=0.5, lr=1e-2,
                  progress=False, channels_last=False)
    d.fit(loader, epochs=2, val_loader=torch.utils.data.DataLoader(LMDataset(4, seed=9), batch_size=4))
    steps = [r for r in d.history if "loss" in r]
    val = [r for r in d.history if "val_nll" in r]
    assert len(val) == 2 and all(0 <= r["val_accuracy"] <= 1 for r in val)  # next-token validation per epoch
    assert steps and all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    assert any(float((p.detach() - before_s[n]).abs().max()) > 0 for n, p in student.named_parameters())
    assert all(torch.equal(p, before_t[n]) for n, p in teacher.named_parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    log = d.method.generation_log
    if options.get("on_policy") == 1.0:
        assert len(log) == 4 and all(g["by"] == "student" for g in log)
        assert [g["seed"] for g in log] == [1, 3, 5, 7] and [g["step"] for g in log] == [0, 1, 2, 3]  # recorded
    elif options.get("seq_kd"):
        assert sum(g["by"] == "teacher" for g in log) == 4 and sum(g["by"] == "student" for g in log) >= 1
    else:
        assert log == []


def test_readme_llm_example_runs() -> None:
    import re

    from conftest import ROOT

    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text[text.index("## LLM distillation"):], flags=re.S).group(1)
    torch.manual_seed(0)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
    d = scope["d"]
    last = d.history[-1]
    assert last["phase"] == "distilled" and last["soft"] > 0 and last["hard"] > 0
    assert all(g["by"] == "student" for g in d.method.generation_log)


def test_prompt_longer_than_the_context_is_refused(pair) -> None:
    student, teacher = pair
    method = build_method("lm_kd", copy.deepcopy(student), LiveTeacher(teacher, tune=False),
                          options={"on_policy": 1.0, "max_new_tokens": 60})
    method.train()
    with pytest.raises(DistillError, match="context of 64 tokens"):
        method(lm_batch(batch=2, length=8, prompt=6))


def test_bf16_autocast_student_step_runs(pair) -> None:
    student, teacher = pair
    batch = lm_batch(batch=2, length=8)
    s = copy.deepcopy(student)
    method = build_method("lm_kd", s, LiveTeacher(teacher, tune=False), options={"head": "chunked"})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method(batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and all(p.grad is not None for p in s.lm_head.parameters())


def test_completions_are_left_padded_prompts_plus_seeded_samples(pair) -> None:
    """On-policy batches: each row's prompt (leading -100 labels) left-padded, then the student's sampled tokens as
    the only targets; the same seed gives the same completion, and tokens after an EOS are padding."""
    student, teacher = pair
    batch = lm_batch(batch=3, length=8, prompt=3)
    batch["labels"][2, :5] = -100  # a longer prompt in row 2
    runs = []
    for _ in range(2):
        method = build_method("lm_kd", copy.deepcopy(student), LiveTeacher(teacher, tune=False),
                              options={"on_policy": 1.0, "max_new_tokens": 6, "seed": 7})
        runs.append(method._complete(method.student, batch, "student"))
    a, b = runs
    assert torch.equal(a["input_ids"], b["input_ids"])  # recorded seed: reproducible
    assert a["input_ids"].shape == (3, 5 + 6)
    assert torch.equal(a["input_ids"][2, :5], batch["input_ids"][2, :5])
    assert torch.equal(a["input_ids"][0, 2:5], batch["input_ids"][0, :3])  # left-padded
    assert torch.equal(a["attention_mask"][0, :5], torch.tensor([0, 0, 1, 1, 1]))
    assert bool((a["labels"][:, :5] == -100).all())
    gen, gen_labels, alive = a["input_ids"][:, 5:], a["labels"][:, 5:], a["attention_mask"][:, 5:].bool()
    assert torch.equal(gen_labels[alive], gen[alive]) and bool((gen_labels[~alive] == -100).all())
    for row, keep in zip(gen, alive):  # everything after the first EOS (id 2) is padding; the EOS itself a target
        eos = (row == 2).nonzero()
        if len(eos):
            assert bool(keep[: eos[0, 0] + 1].all()) and not bool(keep[eos[0, 0] + 1:].any())


def test_layer_subset_decoder_student_distils() -> None:
    """Issue 10 item 4: a student initialised from every other decoder block of the teacher (DistilBERT's
    construction on a Llama) generates with its own KV cache and trains with lm_kd."""
    from distill.api import Distiller
    from distill.hf import layer_subset_student

    teacher = tiny_llama(hidden=32, layers=4, seed=3)
    student = layer_subset_student(teacher)
    assert student.config.num_hidden_layers == 2
    for name, p in student.model.layers[1].named_parameters():
        assert torch.equal(p, teacher.model.layers[2].get_parameter(name))
    assert student.generate(input_ids=torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False,
                            pad_token_id=0).shape == (1, 6)
    loader = torch.utils.data.DataLoader(LMDataset(4), batch_size=4)
    d = Distiller(teacher, student, method="lm_kd", alpha=0.5, temperature=1.0, progress=False, channels_last=False)
    d.fit(loader, epochs=1)
    assert torch.isfinite(torch.tensor(d.history[-1]["loss"]))


def test_lm_metrics_match_the_models_own_loss(pair) -> None:
    from distill.api import Distiller
    from distill.engine.evaluate import lm_metrics

    student, teacher = pair
    batch = lm_batch(batch=3, length=8)
    with torch.no_grad():
        own = student(**batch).loss.item()  # HF's shifted labels loss
    got = lm_metrics(student, [batch])
    assert got["nll"] == pytest.approx(own, rel=1e-5)
    assert got["tokens"] == float((next_token_labels(batch) != -100).sum())
    assert lm_metrics(student, [pad_lm(batch, 16)])["nll"] == pytest.approx(own, rel=1e-5)  # padding never counts
    same = lm_metrics(student, [batch], teacher=copy.deepcopy(student))
    assert same["agreement"] == 1.0 and abs(same["kl_to_teacher"]) < 1e-6
    assert same["teacher_nll"] == pytest.approx(same["nll"], rel=1e-6)
    d = Distiller(teacher, student, method="lm_kd", progress=False)
    out = d.evaluate([batch])
    assert set(out) >= {"nll", "perplexity", "accuracy", "agreement", "kl_to_teacher", "teacher_nll"}


@pytest.mark.parametrize("head", ["chunked", "logits"])
def test_bf16_autocast_steps(head: str) -> None:
    """Steps under bf16 autocast (what Accelerate's mixed_precision='bf16' wraps forward in; its global state cannot
    be switched inside one test process): finite, trains, weights stay float32."""
    teacher, student = tiny_llama(hidden=48, seed=1), tiny_llama(hidden=32, seed=0)
    method = build_method("lm_kd", student, LiveTeacher(teacher, tune=False), temperature=1.0, alpha=0.5,
                          options={"head": head})
    before = student.lm_head.weight.detach().clone()
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    batch = lm_batch(batch=3, length=8)
    for _ in range(3):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = method(batch)
        assert torch.isfinite(out["loss"])
        out["loss"].backward()
        opt.step()
    assert not torch.equal(student.lm_head.weight.detach(), before)
    assert student.lm_head.weight.dtype == torch.float32


def test_hf_trainer_with_lm_kd_trains_and_evaluates(tmp_path) -> None:
    """distill.hf.DistillationTrainer with method='lm_kd': training steps take the chunked head, evaluate gets the
    student's logits (eval mode runs the logits path)."""
    from transformers import TrainingArguments

    from distill.hf import DistillationTrainer

    teacher, student = tiny_llama(hidden=48, seed=1), tiny_llama(hidden=32, seed=0)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, per_device_eval_batch_size=4,
                             max_steps=2, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=LMDataset(8),
                                  eval_dataset=LMDataset(4, seed=3), method="lm_kd", temperature=1.0, alpha=0.5)
    trainer.train()
    scores = trainer.evaluate()
    assert torch.isfinite(torch.tensor(scores["eval_loss"]))


def test_hf_gradient_accumulation_gives_the_update_of_one_big_batch(tmp_path) -> None:
    """Gradient accumulation for LMs today: distill.hf.DistillationTrainer with lm_kd. Batch 8 in one step equals 4 + 4
    accumulated (micro-batches with different numbers of next-token targets), in the weights. The dataset is the 8
    rows, so both see the same examples in each optimizer step whatever the Trainer's sampler does."""
    from hf_models import collate
    from transformers import TrainingArguments

    from distill.hf import DistillationTrainer

    teacher = tiny_llama(hidden=48, seed=1)
    trained = []
    for name, size, accum in (("one", 8, 1), ("acc", 4, 2)):
        args = TrainingArguments(output_dir=str(tmp_path / name), per_device_train_batch_size=size,
                                 gradient_accumulation_steps=accum, max_steps=3, learning_rate=0.05, optim="sgd",
                                 lr_scheduler_type="constant", warmup_steps=0, seed=0, use_cpu=True, report_to="none",
                                 save_strategy="no", logging_strategy="no", disable_tqdm=True)
        trainer = DistillationTrainer(model=tiny_llama(hidden=32, seed=0), teacher_model=teacher, args=args,
                                      train_dataset=RaggedLM(), data_collator=collate, method="lm_kd",
                                      temperature=1.0, alpha=0.5)
        trainer.train()
        trained.append(trainer.model)
    for (name, a), b in zip(trained[0].named_parameters(), trained[1].parameters()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5, msg=lambda m: f"{name}: {m}")
    assert any(not torch.allclose(p, q) for p, q in zip(trained[0].parameters(), tiny_llama(hidden=32).parameters()))


def test_completing_a_left_padded_batch_keeps_each_prompt_whole(pair) -> None:
    """Rows that are already left-padded (seq-KD output fed to on-policy): the prompt is the real tokens before the
    first label, never the first label's position in the padded row (that would take answer tokens as prompt)."""
    student, teacher = pair
    method = build_method("lm_kd", copy.deepcopy(student), LiveTeacher(teacher, tune=False),
                          options={"on_policy": 1.0, "max_new_tokens": 3, "seed": 0})
    ids = torch.tensor([[0, 0, 11, 12, 21, 22], [13, 14, 15, 16, 23, 24]])
    attention = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    labels = torch.tensor([[-100, -100, -100, -100, 21, 22], [-100, -100, -100, -100, 23, 24]])
    out = method._complete(method.student, {"input_ids": ids, "attention_mask": attention, "labels": labels}, "student")
    assert out["input_ids"].shape[1] == 4 + 3
    assert out["input_ids"][0, 2:4].tolist() == [11, 12] and out["attention_mask"][0, :4].tolist() == [0, 0, 1, 1]
    assert out["input_ids"][1, :4].tolist() == [13, 14, 15, 16]


def test_on_policy_runs_on_a_batch_encoding(pair) -> None:
    """HF collators give a `BatchEncoding` (a UserDict, not a dict): on-policy must still generate."""
    from transformers import BatchEncoding

    student, teacher = pair
    method = build_method("lm_kd", copy.deepcopy(student), LiveTeacher(teacher, tune=False),
                          options={"on_policy": 1.0, "max_new_tokens": 3, "seed": 0})
    method.train()
    method(BatchEncoding(lm_batch(batch=2, length=6, prompt=3)))
    assert [g["by"] for g in method.generation_log] == ["student"]


def test_check_compares_the_tokenizers_the_models_carry(pair) -> None:
    student, teacher = copy.deepcopy(pair[0]), copy.deepcopy(pair[1])
    student.distill_tokenizer = FakeTokenizer({"a": 0, "b": 1})
    teacher.distill_tokenizer = FakeTokenizer({"a": 1, "b": 0})
    batch = lm_batch(batch=2, length=6)
    from distill.methods import METHODS

    with pytest.raises(DistillError, match="tokenizers differ"):
        METHODS.get("lm_kd").check(student, teacher, batch, {})

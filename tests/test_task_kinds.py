"""Task kinds (`distill.task_kinds`): the registry the pipeline dispatches on, and the `causal_lm` kind end to end
through the CLI on a tiny random-initialised Llama teacher saved with a word-level tokenizer (the SmolLM2 recipe's
shape in seconds: the teacher's own greedy answers to the packaged prompts, student alone, lm_kd, report)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, run_cli

from distill.config import parse_recipe
from distill.data.prompts import load_prompts
from distill.errors import DistillError
from distill.task_kinds import TASK_KINDS, TaskKind, register_task_kind, task_kind

BASE = {"name": "t", "teacher": {"name": "mlp"}, "student": {"name": "mlp"}}


def test_registry_holds_the_kinds_and_refuses_unknown_ones() -> None:
    assert {"classification", "embedding", "causal_lm"} <= set(TASK_KINDS.names())
    assert type(task_kind(parse_recipe(BASE))).__name__ == "Classification"
    with pytest.raises(DistillError, match=r"unknown task kind 'embeding'.*embedding"):
        task_kind(parse_recipe({**BASE, "task": "embeding"}))
    with pytest.raises(DistillError, match="task_options.*generation_max_new_tokens"):
        task_kind(parse_recipe({**BASE, "task": "causal_lm", "task_options": {"generation_max_new_tokens": 0}}))
    with pytest.raises(DistillError, match="task_options.*unknown key"):
        task_kind(parse_recipe({**BASE, "task": "classification", "task_options": {"x": 1}}))


def test_distill_check_asks_the_kind_whether_it_can_diagnose() -> None:
    from distill.tasks import check_recipe

    assert TASK_KINDS.get("classification").diagnosable
    for task in ("embedding", "causal_lm"):
        with pytest.raises(DistillError, match=f"task: {task} .its outputs have none"):
            check_recipe(parse_recipe({**BASE, "task": task}))  # refused before any data or model is loaded


def test_pipeline_dispatches_on_the_kind_not_on_names() -> None:
    source = (ROOT / "src" / "distill" / "pipeline.py").read_text()
    assert not re.search(r"\.task\s*[!=]=", source)  # no `if r.task == ...` branches left


def test_a_new_kind_is_one_registration() -> None:
    @register_task_kind("test-kind")
    class Custom(TaskKind):
        def check_outputs(self, counts, data, recipe) -> None:  # noqa: ANN001
            raise DistillError("custom check ran")

    try:
        kind = task_kind(parse_recipe({**BASE, "task": "test-kind"}))
        with pytest.raises(DistillError, match="custom check ran"):
            kind.check_outputs({"teacher": 3, "student": 3}, None, None)
    finally:
        TASK_KINDS._items.pop("test-kind")


# -- causal_lm through the CLI ------------------------------------------------------------------------------------------

pytest.importorskip("transformers")
VOCAB = 300


@pytest.fixture(scope="module")
def tiny_teacher_dir(tmp_path_factory) -> Path:
    """A 2-layer LlamaForCausalLM (context 128) and a word-level tokenizer over the packaged prompts' commonest words,
    saved with `save_pretrained` (loaded back by `hf-causal-lm` with `local_files_only`)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = Counter(w for p in load_prompts() for w in re.findall(r"\w+|[^\w\s]", p))
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    for w, _ in words.most_common(VOCAB - len(vocab)):
        vocab[w] = len(vocab)
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="</s>", pad_token="<pad>",
                                  bos_token="<s>")
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _recipe(tmp_path: Path, teacher: Path) -> Path:
    """The shipped smollm2 recipe with the tiny teacher and a few steps."""
    doc = yaml.safe_load((ROOT / "src" / "distill" / "recipes" / "smollm2.yaml").read_text())
    doc["teacher"] = {"name": "hf-causal-lm", "kwargs": {"path": str(teacher)}}
    doc["student"]["kwargs"] = {"teacher_path": str(teacher), "hidden_size": 8, "num_layers": 1, "num_heads": 2,
                                "num_kv_heads": 1, "intermediate_size": 16}
    doc["data"]["kwargs"] = {"teacher": "hf-causal-lm", "teacher_kwargs": {"path": str(teacher)}, "num_prompts": 20,
                             "max_new_tokens": 6, "batch_size": 10, "progress": False}
    doc["data"]["batch_size"] = 4
    doc["task_options"] = {"generation_examples": 2, "generation_max_new_tokens": 6, "speed_new_tokens": 3,
                           "speed_runs": 1, "speed_batch": 2}
    doc["train"].update(epochs=1, max_steps=2, warmup_steps=0)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_causal_lm_recipe_runs_end_to_end_through_the_cli(tiny_teacher_dir, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code, _, err = run_cli(["run", str(_recipe(tmp_path, tiny_teacher_dir)), "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "causal_lm" and report["recipe"]["method"] == "lm_kd"
    assert set(report["models"]) == {"teacher", "scratch", "distilled"}
    assert report["phases"]["scratch"]["steps"] == 2 and report["phases"]["distilled"]["steps"] == 2
    for name, row in report["models"].items():
        assert row["tokens"] > 0 and row["perplexity"] == pytest.approx(float(torch.tensor(row["nll"]).exp()), rel=1e-5)
        assert 0 <= row["agreement"] <= 1 and row["kl_to_teacher"] >= -1e-6
        assert row["generate_tokens_per_s"] > 0 and row["forward_tokens_per_s"] > 0 and row["params"] > 0
    t = report["models"]["teacher"]
    assert t["agreement"] == 1.0 and abs(t["kl_to_teacher"]) < 1e-5  # the teacher against itself
    # the text is the teacher's own greedy answers: its top-1 is the next token wherever it is a target
    assert t["accuracy"] == pytest.approx(1.0)
    assert report["models"]["distilled"]["params"] <= report["models"]["teacher"]["params"] / 4
    gens = json.loads((out / "generations.json").read_text())
    assert gens == report["generations"] and len(gens["examples"]) == 2
    for ex in gens["examples"]:
        assert {"prompt", "reference", "teacher", "scratch", "distilled"} <= set(ex)
        assert ex["teacher"] == ex["reference"]  # greedy again: the same answer
        assert ex["prompt"] in load_prompts()  # a held-out prompt as written
    page = (out / "report.html").read_text()
    assert "Generations (held-out prompts)" in page and "perplexity" in page
    assert json.loads((out / "status.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("key, value, message", [
    ("data.kwargs", {"max_new_tokens": 200}, "exceeds the teacher's context of 128 tokens"),
    ("data.kwargs", {"max_new_tokens": 0}, "max_new_tokens=0 must be in"),
    ("task_options", {"generation_max_new_tokens": 5000}, "generation_max_new_tokens"),
], ids=["prompt-past-context", "answer-length", "report-generation-length"])
def test_bad_causal_lm_input_is_one_line_exit_2(tiny_teacher_dir, tmp_path, capsys, key, value, message) -> None:
    path = _recipe(tmp_path, tiny_teacher_dir)
    doc = yaml.safe_load(path.read_text())
    if key == "data.kwargs":
        doc["data"]["kwargs"].update(value)
    else:
        doc[key] = value
    path.write_text(yaml.safe_dump(doc))
    out = tmp_path / "run"
    code, _, err = run_cli(["run", str(path), "--out", str(out), "--no-progress"], capsys)
    line = err.strip().splitlines()[-1]
    assert code == 2 and message in line, err
    assert not out.exists()  # nothing half-written

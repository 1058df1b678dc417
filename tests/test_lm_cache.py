"""The LLM logit cache on tiny random Llama models: round trip, refusal of another teacher or tokenizer, and the
fidelity figures against numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from distill.errors import DistillError

pytest.importorskip("transformers")
from lm_fixtures import LM_VOCAB, WordTokenizer, tiny_llama, token_sequences  # noqa: E402

from distill.teachers.lm_cache import LMLogitCache, build_lm_cache, teacher_identity  # noqa: E402
from distill.teachers.lm_fidelity import cache_fidelity, fidelity_terms  # noqa: E402


@pytest.fixture(scope="module")
def teacher() -> torch.nn.Module:
    return tiny_llama(seed=0)


@pytest.fixture(scope="module")
def identity(teacher: torch.nn.Module) -> dict:
    return teacher_identity(teacher, WordTokenizer(), name="tiny")


def _live(model: torch.nn.Module):  # noqa: ANN202
    def run(tokens: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=tokens.unsqueeze(0)).logits[0].float()
    return run


def test_topk_round_trip(tmp_path, teacher, identity) -> None:
    seqs = token_sequences(5)
    cache = build_lm_cache(teacher, seqs, tmp_path / "c", identity=identity, form="topk", k=8, batch_size=2,
                           notes={"made": "random ids"})
    again = LMLogitCache(tmp_path / "c", expect=identity)
    m = again.manifest
    assert m["form"] == "topk" and m["k"] == 8 and m["num_sequences"] == 5 and m["notes"] == {"made": "random ids"}
    assert m["num_tokens"] == sum(map(len, seqs))
    assert m["bytes_per_token"] == 8 * 2 + 8 * 2 + 2  # float16 log-probs + uint16 ids + float16 rest
    assert again.arrays["ids"].dtype == np.uint16 and again.arrays["logprobs"].dtype == np.float16
    for i, seq in enumerate(seqs):
        entry = again.sequence(i)
        assert entry["tokens"].tolist() == seq
        logp = torch.log_softmax(_live(teacher)(torch.tensor(seq)), -1)  # unpadded, one sequence at a time
        values, ids = logp.topk(8, -1)
        assert torch.equal(entry["ids"], ids)
        assert torch.allclose(entry["logprobs"], values, atol=2e-3)
        rest = 1 - values.exp().sum(-1)
        assert torch.allclose(entry["rest"], rest, atol=1e-3)
    assert len(cache) == 5
    masks = [[j % 2 == 0 for j in range(len(q))] for q in seqs]
    batch = cache.batch([3, 0], masks)
    assert batch["input_ids"].shape == (2, max(len(seqs[3]), len(seqs[0]))) and batch["logprobs"].shape[-1] == 8
    # the given mask, but never a sequence's last position (it predicts past the end)
    assert batch["mask"][0, : len(seqs[3])].tolist() == masks[3][:-1] + [False]
    assert not batch["mask"][1, len(seqs[0]) - 1:].any()
    assert batch["attention_mask"][1].sum() == len(seqs[0])
    with pytest.raises(DistillError, match="mask for cached sequence"):
        cache.batch([0], [[True]] * 5)


def test_sampled_form_weights_and_seed(tmp_path, teacher, identity) -> None:
    seqs = token_sequences(3, seed=1)
    a = build_lm_cache(teacher, seqs, tmp_path / "a", identity=identity, form="sampled", samples=16, seed=3)
    b = build_lm_cache(teacher, seqs, tmp_path / "b", identity=identity, form="sampled", samples=16, seed=3)
    assert a.manifest["file"]["sha256"] == b.manifest["file"]["sha256"]  # same seed, same draws
    counts = a.arrays["counts"].astype(np.int64)
    assert counts.sum() == len(a.arrays["ids"]) == len(a.arrays["weights"]) and counts.min() >= 1
    assert a.manifest["bytes_per_token"] == pytest.approx((4 * counts.sum() + 3 * len(counts)) / len(counts))
    for i in range(len(seqs)):
        entry = a.sequence(i)
        w = entry["weights"].double()
        assert entry["ids"].shape == w.shape and w.shape[0] == len(seqs[i])
        assert torch.allclose(w.sum(-1), torch.ones(len(seqs[i]), dtype=torch.float64))  # proposal = teacher: count/K
        assert torch.equal((w * 16).round(), w * 16)
        for row_ids, row_w in zip(entry["ids"], w):
            used = row_ids[row_w > 0]
            assert len(set(used.tolist())) == len(used)  # distinct ids; repeats became counts
    assert a.manifest["slots"] == counts.max() <= 16
    # ragged storage reads back as the dense rows it was made from
    logp = torch.log_softmax(_live(teacher)(torch.tensor(seqs[0])), -1)
    from distill.teachers.lm_cache import sampled_entries

    dense = sampled_entries(logp, 16, 1.0, torch.Generator().manual_seed(3))
    width = a.sequence(0)["ids"].shape[1]
    assert torch.equal(a.sequence(0)["ids"], dense["ids"][:, :width])
    assert torch.allclose(a.sequence(0)["weights"], dense["weights"][:, :width].half().float())
    # a flattened proposal gives weights p / q: no longer summing to 1, still positive
    c = build_lm_cache(teacher, seqs, tmp_path / "c", identity=identity, form="sampled", samples=16,
                       proposal_temperature=2.0)
    assert not torch.allclose(c.sequence(0)["weights"].sum(-1), torch.ones(len(seqs[0])), atol=1e-2)


def test_refuses_another_teacher_tokenizer_or_a_partial_cache(tmp_path, teacher, identity) -> None:
    build_lm_cache(teacher, token_sequences(2), tmp_path / "c", identity=identity, k=4)
    other = teacher_identity(tiny_llama(seed=1), WordTokenizer())
    with pytest.raises(DistillError, match="another teacher") as err:
        LMLogitCache(tmp_path / "c", expect=other)
    assert "\n" not in str(err.value)
    with pytest.raises(DistillError, match="another tokenizer"):
        LMLogitCache(tmp_path / "c", expect={**identity, "tokenizer_sha256": teacher_identity(
            teacher, WordTokenizer(salt="x"))["tokenizer_sha256"]})
    with pytest.raises(DistillError, match="vocabulary size"):
        LMLogitCache(tmp_path / "c", expect={**identity, "vocab_size": 301})
    (tmp_path / "c" / "cache.safetensors").write_bytes(b"garbage")
    with pytest.raises(DistillError, match="corrupt"):
        LMLogitCache(tmp_path / "c")
    (tmp_path / "c" / "manifest.json").unlink()
    with pytest.raises(DistillError, match="incomplete"):
        LMLogitCache(tmp_path / "c")
    with pytest.raises(DistillError, match="outside the teacher's vocabulary"):
        build_lm_cache(teacher, [[1, 2, LM_VOCAB]], tmp_path / "d", identity=identity)
    with pytest.raises(DistillError, match="predicts 300 tokens but its identity says vocab_size=400"):
        build_lm_cache(teacher, [[1, 2]], tmp_path / "d", identity={**identity, "vocab_size": 400})
    with pytest.raises(DistillError, match="form"):
        build_lm_cache(teacher, [[1, 2]], tmp_path / "d", identity=identity, form="dense")
    doc = json.loads((tmp_path / "d").joinpath("manifest.json").read_text()) if (tmp_path / "d" / "manifest.json").exists() else None
    assert doc is None  # nothing half-written looks complete


def _np_terms(live: np.ndarray, scorer: np.ndarray, ids: np.ndarray, top: np.ndarray, rest: np.ndarray) -> dict:
    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    out = {key: [] for key in ("ce_live", "kl_live", "ce_cached", "ce_renormalised", "kl_cached", "kl_uniform_tail",
                               "kl_coarse")}
    for z, s, i, lp, r in zip(live, scorer, ids, top, rest):
        p, ls = np.exp(log_softmax(z)), log_softmax(s)
        v, k = len(z), len(i)
        other = np.setdiff1d(np.arange(v), i)
        out["ce_live"].append(-(p * ls).sum())
        out["kl_live"].append((p * (np.log(p) - ls)).sum())
        out["ce_cached"].append(-(np.exp(lp) * ls[i]).sum() - r / (v - k) * ls[other].sum())
        qa, qb = np.append(np.exp(lp), r), np.append(np.exp(ls[i]), np.exp(ls[other]).sum())
        out["kl_cached"].append((qa * np.log(qa / qb)).sum())
        out["ce_renormalised"].append(-(np.exp(lp) * ls[i]).sum() / np.exp(lp).sum())
        recon = np.full(v, r / (v - k))
        recon[i] = np.exp(lp)
        recon /= recon.sum()
        out["kl_uniform_tail"].append((p * np.log(p / recon)).sum())
        pc = np.append(p[i], p[other].sum())
        qc = np.append(np.exp(lp), r)
        out["kl_coarse"].append((pc * np.log(pc / qc)).sum())
    return {key: np.array(value) for key, value in out.items()}


def test_fidelity_terms_match_numpy() -> None:
    rng = np.random.default_rng(0)
    live, scorer = rng.normal(size=(6, 13)) * 2, rng.normal(size=(6, 13))
    # a cached entry that is *not* exactly the live top-k (rounded, perturbed), so every term is non-trivial
    logp = live - np.log(np.exp(live).sum(-1, keepdims=True))
    ids = np.argsort(-logp, -1)[:, :4]
    top = np.take_along_axis(logp, ids, -1) + rng.normal(size=(6, 4)) * 0.05
    rest = np.clip(1 - np.exp(top).sum(-1), 1e-3, None)
    got = fidelity_terms(torch.tensor(live), {"ids": torch.tensor(ids), "logprobs": torch.tensor(top),
                                              "rest": torch.tensor(rest)}, "topk", torch.tensor(scorer))
    want = _np_terms(live, scorer, ids, top, rest)
    for key, value in want.items():
        assert np.allclose(got[key].numpy(), value, rtol=1e-4, atol=1e-5), key
    # the sampled form's estimate: importance-weighted CE
    sids, w = rng.integers(0, 13, size=(6, 5)), rng.random(size=(6, 5))
    got = fidelity_terms(torch.tensor(live), {"ids": torch.tensor(sids), "weights": torch.tensor(w),
                                              "entropy": torch.zeros(6)}, "sampled", torch.tensor(scorer))
    ls = scorer - np.log(np.exp(scorer).sum(-1, keepdims=True))
    assert np.allclose(got["ce_cached"].numpy(), -(w * np.take_along_axis(ls, sids, -1)).sum(-1), rtol=1e-5)


def test_fidelity_and_loss_on_a_tiny_teacher(tmp_path) -> None:
    teacher = tiny_llama(seed=0)
    with torch.no_grad():
        teacher.model.embed_tokens.weight.mul_(4.0)  # tied head: logits x4, a less flat teacher than at init
    identity = teacher_identity(teacher)
    seqs = token_sequences(4, seed=2)
    student = tiny_llama(seed=5, layers=2)
    full = build_lm_cache(teacher, seqs, tmp_path / "full", identity=identity, k=LM_VOCAB)  # k = V: exact
    fid = cache_fidelity(full, _live(teacher), _live(student))
    assert abs(fid["ce_gap"]) < 1e-2 and abs(fid["kl_gap"]) < 1e-2 and fid["rest"] < 1e-3 and fid["kl_uniform_tail"] < 1e-3
    top = build_lm_cache(teacher, seqs, tmp_path / "top", identity=identity, k=4)
    fid = cache_fidelity(top, _live(teacher), _live(student))
    # measured: rest 0.93, kl_live 0.14 vs kl_cached 0.05; the teacher scoring itself: renormalised gap -1.66
    assert fid["rest"] > 0.5  # a random 300-token teacher is flat: the top 4 hold little of its mass
    assert fid["kl_cached"] <= fid["kl_live"] - 0.05  # the k + 1-outcome KL never exceeds the full one
    assert cache_fidelity(top, _live(teacher))["ce_gap_renormalised"] < -1.0  # renormalising drops the tail
    sampled = build_lm_cache(teacher, seqs, tmp_path / "s", identity=identity, form="sampled", samples=256, seed=0)
    for scorer in (_live(student), None):  # measured gaps <= 0.01 over 26 positions
        fid = cache_fidelity(sampled, _live(teacher), scorer)
        assert abs(fid["ce_gap"]) < 0.05 and abs(fid["kl_gap"]) < 0.05  # unbiased
        assert abs(fid["entropy_cached"] - fid["entropy_live"]) < 1e-2
    # the cache's loss on a batch: against the teacher itself, top-k KL is 0 and the sampled CE estimates H(p)
    batch = top.batch([0, 1, 2])
    logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.detach()
    assert top.loss(logits, batch).item() == pytest.approx(0.0, abs=2e-3)
    sb = sampled.batch([0, 1, 2])
    h = (sb["entropy"] * sb["mask"]).sum() / sb["mask"].sum()
    assert sampled.loss(logits, sb).item() == pytest.approx(h.item(), abs=0.05)
    with pytest.raises(DistillError, match="temperature"):
        sampled.loss(logits, sb, temperature=2.0)

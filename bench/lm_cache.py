"""The LLM logit cache on the real SmolLM2-135M-Instruct teacher: bytes/token, leftover mass and fidelity.

    PYTHONPATH=src HF_HUB_OFFLINE=1 nice -n 10 python bench/lm_cache.py [--prompts 12] [--new-tokens 64] [--threads 2]

Held-out text: the teacher's own greedy answers (`distill.data.prompts.teacher_answers`, seed 0) to the first
`--prompts` prompts of the packaged set's seeded 10% held-out split, each sequence = chat-formatted prompt + answer
(kept in `--work` and reused by the next run with the same settings).
Caches built over every position: top-k (k = 64 and 16) and random-sampling (K = 64 and 12 draws from the teacher).
Fidelity (see `distill.teachers.lm_fidelity.fidelity_terms`), against the live teacher on the same positions, for two
scorers s: the teacher itself (CE = its own expected NLL of the next token), the teacher at T = 2 (a scorer near the
teacher, as a student late in training) and an untrained layer-subset student (every other layer of the teacher): `ce_gap` = mean(cached CE - live CE) — the cached-vs-live NLL gap —,
`ce_abs_error` per position, `kl_gap` = (loss-value KL - live KL(teacher || s)); top-k also `rest` (leftover mass),
`kl_uniform_tail` = KL(live || top-k with the tail spread uniformly), `ce_gap_renormalised` (the naive top-k).
Also: load time, forward tokens/s, generation tokens/s. Writes bench/results/lm_cache.json. Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from distill.data.prompts import load_prompts, split_prompts, teacher_answers
from distill.models.causal_lm import causal_lm_student, load_causal_lm, smollm2_path
from distill.teachers.lm_cache import build_lm_cache, teacher_identity
from distill.teachers.lm_fidelity import cache_fidelity

CACHES = [("topk", {"k": 64}), ("topk", {"k": 16}), ("sampled", {"samples": 64}), ("sampled", {"samples": 12})]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "lm_cache.json"))
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "distill-lm-cache-bench"),
                    help="answers and caches; the answers are reused when the settings match")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result: dict = {"machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
                    "threads": args.threads, "command": " ".join(sys.argv)}

    t0 = time.perf_counter()
    teacher = load_causal_lm(smollm2_path())
    result["load_s"] = round(time.perf_counter() - t0, 1)
    tok = teacher.distill_tokenizer
    identity = teacher_identity(teacher, tok)

    held = split_prompts(load_prompts(), held_out=0.1, seed=0)[1][: args.prompts]
    work = Path(args.work)
    answers = teacher_answers(teacher, tok, held, out=work / "answers", max_new_tokens=args.new_tokens, seed=0,
                              batch_size=4, progress=False)
    seqs, masks = answers.sequences(), answers.target_masks()  # positions predicting an answer token
    result["held_out"] = {"prompts": len(held), "positions": sum(map(len, seqs)),
                          "answer_tokens": answers.num_answer_tokens, "example": tok.decode(answers.answer_ids[0])}
    # generation tokens/s: one prompt at a time, greedy, 32 new tokens (the EOS check disabled so all 32 are made)
    t0 = time.perf_counter()
    for p_ids in answers.prompt_ids[:2]:
        with torch.inference_mode():
            teacher.generate(torch.tensor([p_ids]), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                             pad_token_id=tok.eos_token_id)
    result["generate_tokens_per_s"] = round(64 / (time.perf_counter() - t0), 1)

    live_memo: dict = {}

    def live(tokens: torch.Tensor) -> torch.Tensor:
        key = tuple(tokens.tolist())
        if key not in live_memo:
            with torch.inference_mode():
                live_memo[key] = teacher(input_ids=tokens.unsqueeze(0)).logits[0].float()
        return live_memo[key]

    # forward tokens/s: the held-out sequences, 4 at a time (right-padded), median of 3 passes
    batch = [torch.tensor(s) for s in seqs[:4]]
    ids = torch.nn.utils.rnn.pad_sequence(batch, batch_first=True)
    attn = torch.nn.utils.rnn.pad_sequence([torch.ones_like(b) for b in batch], batch_first=True)
    times = []
    for _ in range(4):
        t0 = time.perf_counter()
        with torch.inference_mode():
            teacher(input_ids=ids, attention_mask=attn)
        times.append(time.perf_counter() - t0)
    result["forward_tokens_per_s"] = round(int(attn.sum()) / statistics.median(times[1:]), 1)

    student = causal_lm_student(teacher, init="layers").eval()
    student_memo: dict = {}

    def scorer(tokens: torch.Tensor) -> torch.Tensor:
        key = tuple(tokens.tolist())
        if key not in student_memo:
            with torch.inference_mode():
                student_memo[key] = student(input_ids=tokens.unsqueeze(0)).logits[0].float()
        return student_memo[key]

    rows = []
    for form, kw in CACHES:
        t0 = time.perf_counter()
        cache = build_lm_cache(teacher, seqs, work / f"{form}{kw}", identity=identity, form=form, seed=0, **kw,
                               notes={"sequences": answers.manifest["how"]})
        row = {"form": form, **kw, "build_s": round(time.perf_counter() - t0, 1),
               "bytes_per_token": cache.manifest["bytes_per_token"], "slots": cache.manifest["slots"]}
        flat = lambda tokens: live(tokens) / 2  # noqa: E731 - a flattened teacher: a scorer near, not at, p
        for name, fn in (("teacher", None), ("teacher_T2", flat), ("student", scorer)):
            for where, m in (("all", None), ("answer", masks)):  # every position / those predicting the answer
                fid = cache_fidelity(cache, live, fn, masks=m)
                row[f"{name}/{where}"] = {k: round(v, 4) for k, v in fid.items()}
        rows.append(row)
        print(json.dumps(row), flush=True)
    result["caches"] = rows
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "caches"}))
    for row in rows:
        t, s, f = row["teacher/all"], row["student/all"], row["teacher_T2/all"]
        print(f"{row['form']:8s} {row.get('k', row.get('samples')):3d}  {row['bytes_per_token']:6.1f} B/tok  "
              f"rest {t.get('rest', float('nan')):.4f}  teacher-NLL gap {t['ce_gap']:+.4f} (|.| {t['ce_abs_error']:.4f})  "
              f"flat-teacher CE gap {f['ce_gap']:+.4f} KL gap {f['kl_gap']:+.4f}  "
              f"student CE gap {s['ce_gap']:+.4f}  KL gap {s['kl_gap']:+.4f}  "
              f"renorm gap {t.get('ce_gap_renormalised', float('nan')):+.4f}  KL uniform tail {t.get('kl_uniform_tail', float('nan')):.4f}")


if __name__ == "__main__":
    main()

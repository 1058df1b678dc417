"""Teacher vs student speed for the SmolLM2 pair: forward and greedy-generation tokens/s, as ratios measured in one
process (A/B interleaved, median of repeats), so a loaded machine slows both alike.

    PYTHONPATH=src HF_HUB_OFFLINE=1 nice -n 10 python bench/lm_speed.py [--repeats 3] [--threads 1]

Teacher: SmolLM2-135M-Instruct (float32, de-quantised GGUF). Students: `causal_lm_student(teacher)` (from scratch,
28.3M), `init="layers"` (every other decoder layer, 81M) and `init="layers", layers=[0]` (`block0`: the smollm2
recipe's student, the embedding + decoder block 0, 31.9M). Forward: batch 4 x 128 tokens. Generation: batch 1,
a chat-formatted packaged prompt, 32 new tokens (EOS ignored so all are made), KV cache on. Also the teacher's load
time. Prints one JSON line. Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from distill.data.prompts import load_prompts
from distill.models import count_params
from distill.models.causal_lm import causal_lm_student, load_causal_lm, smollm2_path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    teacher = load_causal_lm(smollm2_path())
    load_s = time.perf_counter() - t0
    tok = teacher.distill_tokenizer
    models = {"teacher": teacher, "scratch": causal_lm_student(teacher).eval(),
              "layers": causal_lm_student(teacher, init="layers").eval(),
              "block0": causal_lm_student(teacher, init="layers", layers=[0]).eval()}
    x = torch.randint(0, teacher.config.vocab_size, (4, 128), generator=torch.Generator().manual_seed(0))
    text = tok.apply_chat_template([{"role": "user", "content": load_prompts()[0]}], tokenize=False,
                                   add_generation_prompt=True)
    prompt = tok(text, return_tensors="pt")["input_ids"]
    fwd: dict[str, list[float]] = {n: [] for n in models}
    gen: dict[str, list[float]] = {n: [] for n in models}
    with torch.inference_mode():
        for m in models.values():  # warm-up
            m(input_ids=x[:1, :16])
        for _ in range(args.repeats):
            for name, m in models.items():
                t0 = time.perf_counter()
                m(input_ids=x)
                fwd[name].append(x.numel() / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                m.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=tok.eos_token_id)
                gen[name].append(32 / (time.perf_counter() - t0))
    out = {"threads": args.threads, "repeats": args.repeats, "teacher_load_s": round(load_s, 1),
           "params": {n: count_params(m) for n, m in models.items()}}
    for name in models:
        out[f"{name}_forward_tok_s"] = round(statistics.median(fwd[name]), 1)
        out[f"{name}_generate_tok_s"] = round(statistics.median(gen[name]), 2)
    for name in ("scratch", "layers", "block0"):
        out[f"{name}_vs_teacher_forward"] = round(out[f"{name}_forward_tok_s"] / out["teacher_forward_tok_s"], 2)
        out[f"{name}_vs_teacher_generate"] = round(out[f"{name}_generate_tok_s"] / out["teacher_generate_tok_s"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

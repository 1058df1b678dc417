"""Supervised KD step speed (λ = 0): our `lm_kd` step against TRL 1.16's GKD loss step on the same models and batch.

TRL side: `trl.experimental.gkd.GKDTrainer.compute_loss` itself (its non-Liger path: student forward, teacher forward
under no_grad, `generalized_jsd_loss` on the full logits) called on a bare trainer object holding the teacher, β and T,
then `loss.backward()` — a GKD training step with λ = 0 minus the `Trainer`'s own bookkeeping (which would only add
to TRL's time). Ours: `lm_kd` with the same divergence (generalized JSD, β = 0.5, T = 1, alpha = 1: soft term only,
as GKD), hidden-state chunked head (`head: chunked`) and logits head. Tiny Llama-style pair from configs with
SmolLM2's vocabulary size V = 49,152; batch 4 × 256 tokens, a 32-token prompt (-100) per row. Each variant is timed
over `--steps` forward+backward steps after one warm-up, interleaved over `--rounds` rounds; the figure is the ratio
of median step times (tokens/s ratio), 1 torch thread.

    PYTHONPATH=src:/tmp/trlenv/lib/python3.11/site-packages:/tmp/trlextra TRL_EXPERIMENTAL_SILENCE=1 \
        python bench/trl_step_speed.py
(see bench/trl_loss_compare.py for installing TRL outside the project's environment)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=49152)
    args = ap.parse_args()

    import trl
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl.experimental.gkd import GKDTrainer

    from distill.methods import build_method
    from distill.teachers import LiveTeacher

    torch.set_num_threads(1)

    def llama(hidden: int, layers: int, seed: int) -> torch.nn.Module:
        cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                          max_position_embeddings=2048, tie_word_embeddings=False)
        cfg._attn_implementation = "sdpa"
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg)

    student, teacher = llama(64, 2, 0), llama(96, 2, 1)
    teacher.eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab, (args.batch, args.length), generator=g)
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
    values = {name: fn() for name, fn in variants.items()}  # warm-up, and the losses to compare
    student.zero_grad(set_to_none=True)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            for _ in range(args.steps):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
                student.zero_grad(set_to_none=True)
    tokens = args.batch * args.length
    base = statistics.median(times["trl GKD loss step"])
    print(f"trl {trl.__version__}; batch {args.batch} x {args.length} tokens, V {args.vocab}, 1 thread, "
          f"{args.rounds} rounds x {args.steps} steps each")
    print("\n| step (λ = 0, JSD β 0.5, T 1) | median s/step | tokens/s | speed vs TRL | loss |")
    print("|---|---|---|---|---|")
    for name in variants:
        med = statistics.median(times[name])
        print(f"| {name} | {med:.3f} | {tokens / med:.0f} | {base / med:.2f}x | {values[name]:.6f} |")


if __name__ == "__main__":
    main()

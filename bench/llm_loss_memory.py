"""Peak memory of LM distillation losses: chunked vs the naive full-tensor version (issue 10, item 2).

Part `loss`: forward + backward of one divergence on B·T = 2,048 token rows at V = 49,152 (float32 logits), the
chunked custom-autograd version (`chunk_size="auto"`: about 2**21 logits per chunk) against the naive autograd one (`chunk_size=None`).
Part `step`: one whole KD step (student forward, teacher forward, loss, backward) of the `lm_kd` method on a tiny
Llama-style pair built from configs with V = 49,152, B·T = 2,048: logits + naive loss, logits + chunked loss, and the
hidden-state path (`head: chunked`: lm_head applied one chunk of rows at a time, no (B·T, V) logits of either model).

Memory is measured honestly for torch on CPU: each variant runs in a fresh subprocess, and its peak extra memory is
the rise of the process's RSS high-water mark (`ru_maxrss`) from just after the inputs (and models) exist to the end
of the backward pass. (tracemalloc does not see torch's allocations.) Each subprocess also writes its loss and a
slice of its gradient, which the parent compares across variants.

    PYTHONPATH=src python bench/llm_loss_memory.py [--part loss|step|all] [--tokens 2048] [--vocab 49152]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

import numpy as np


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_loss(variant: str, divergence: str, tokens: int, vocab: int, out: str) -> dict:
    import torch

    from distill.losses import forward_kl, generalized_jsd, reverse_kl

    torch.set_num_threads(1)
    fns = {"forward_kl": forward_kl, "reverse_kl": reverse_kl,
           "jsd": lambda s, t, **k: generalized_jsd(s, t, beta=0.5, **k)}
    g = torch.Generator().manual_seed(0)
    student = torch.randn(tokens, vocab, generator=g).mul_(3.0).requires_grad_(True)
    teacher = torch.randn(tokens, vocab, generator=g).mul_(3.0)
    mask = torch.ones(tokens, dtype=torch.bool)
    mask[::7] = False  # some prompt/padding rows
    warm = fns[divergence](student[:4].detach().clone().requires_grad_(True), teacher[:4], mask=mask[:4])
    warm.backward()
    base = rss_peak_mb()
    loss = fns[divergence](student, teacher, mask=mask, chunk_size=None if variant == "naive" else "auto")
    loss.backward()
    peak = rss_peak_mb() - base
    np.save(out, student.grad[:16].numpy())
    grad_mb = student.numel() * 4 / 2**20
    return {"loss": float(loss), "peak_extra_mb": peak, "grad_mb": grad_mb}


def run_step(variant: str, tokens: int, vocab: int, out: str) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from distill.methods import build_method
    from distill.teachers import LiveTeacher

    torch.set_num_threads(1)

    def llama(hidden: int, layers: int, seed: int) -> torch.nn.Module:
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024,
                          tie_word_embeddings=False)
        cfg._attn_implementation = "sdpa"
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg)

    student, teacher = llama(64, 2, 0), llama(96, 2, 1)
    length = 512
    batch_size = tokens // length
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch_size, length), generator=g)
    attention = torch.ones_like(ids)
    attention[1, length - 100:] = 0  # a padded row
    labels = ids.masked_fill(attention == 0, -100)
    batch = {"input_ids": ids, "attention_mask": attention, "labels": labels}
    options = {"divergence": "forward_kl", "head": "logits" if variant != "hidden" else "chunked",
               "chunk_size": None if variant == "naive" else "auto"}
    method = build_method("lm_kd", student, LiveTeacher(teacher, tune=False), temperature=1.0, alpha=0.5,
                          options=options)
    small = {k: v[:1, :8] for k, v in batch.items()}
    method(small)["loss"].backward()  # warm-up: lazy inits outside the measurement
    method.zero_grad(set_to_none=True)
    base = rss_peak_mb()
    loss = method(batch)["loss"]
    loss.backward()
    peak = rss_peak_mb() - base
    np.save(out, student.lm_head.weight.grad[:16].numpy())
    return {"loss": float(loss), "peak_extra_mb": peak,
            "logits_mb": tokens * vocab * 4 / 2**20, "params_student": sum(p.numel() for p in student.parameters())}


def child(args: argparse.Namespace) -> None:
    if args.part == "loss":
        result = run_loss(args.variant, args.divergence, args.tokens, args.vocab, args.out)
    else:
        result = run_step(args.variant, args.tokens, args.vocab, args.out)
    print(json.dumps(result))


def spawn(part: str, variant: str, tokens: int, vocab: int, divergence: str = "forward_kl") -> tuple[dict, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "grad.npy")
        cmd = [sys.executable, __file__, "--child", "--part", part, "--variant", variant, "--tokens", str(tokens),
               "--vocab", str(vocab), "--divergence", divergence, "--out", out]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return json.loads(res.stdout.strip().splitlines()[-1]), np.load(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", default="all", choices=["loss", "step", "all"])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--variant", default="chunked")
    ap.add_argument("--divergence", default="forward_kl")
    ap.add_argument("--out", default="")
    ap.add_argument("--child", action="store_true")
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    print(f"tokens {args.tokens}, vocab {args.vocab}, float32, 1 torch thread, fresh process per variant")
    if args.part in ("loss", "all"):
        print("\n| loss | naive peak extra MB | chunked peak extra MB | chunked without its gradient | ratio | "
              "|loss diff| | max |grad diff| |")
        print("|---|---|---|---|---|---|---|")
        for div in ("forward_kl", "reverse_kl", "jsd"):
            naive, g_naive = spawn("loss", "naive", args.tokens, args.vocab, div)
            chunked, g_chunked = spawn("loss", "chunked", args.tokens, args.vocab, div)
            print(f"| {div} | {naive['peak_extra_mb']:.0f} | {chunked['peak_extra_mb']:.0f} | "
                  f"{chunked['peak_extra_mb'] - chunked['grad_mb']:.0f} | "
                  f"{chunked['peak_extra_mb'] / naive['peak_extra_mb']:.3f} | "
                  f"{abs(naive['loss'] - chunked['loss']):.1e} | {np.abs(g_naive - g_chunked).max():.1e} |",
                  flush=True)
    if args.part in ("step", "all"):
        print("\n| KD step (lm_kd, forward_kl, alpha 0.5) | peak extra MB | ratio to naive | loss | max |lm_head grad "
              "diff| vs naive |")
        print("|---|---|---|---|---|")
        ref, g_ref = spawn("step", "naive", args.tokens, args.vocab)
        for variant, label in (("naive", "full logits, naive loss"), ("chunked", "full logits, chunked loss"),
                               ("hidden", "hidden states + chunked lm_head (no logits)")):
            res, g = (ref, g_ref) if variant == "naive" else spawn("step", variant, args.tokens, args.vocab)
            print(f"| {label} | {res['peak_extra_mb']:.0f} | {res['peak_extra_mb'] / ref['peak_extra_mb']:.3f} | "
                  f"{res['loss']:.6f} | {np.abs(g - g_ref).max():.1e} |", flush=True)
        print(f"\n(one (B·T, V) float32 tensor = {args.tokens * args.vocab * 4 / 2**20:.0f} MB; "
              f"student {ref['params_student']:,} parameters)")


if __name__ == "__main__":
    main()

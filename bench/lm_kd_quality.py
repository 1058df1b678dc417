"""Does `lm_kd` teach a small causal LM more than its labels alone? Equal-step comparison on synthetic text.

Text: sequences from a random first-order Markov chain over 61 tokens (each token's next-token distribution a seeded
Dirichlet(0.3) draw, so the true continuation is uncertain and a teacher's probabilities carry information the one
sampled label does not). Teacher: Llama-style 4 × 96 trained (Adam 1e-2) on 2,048 sequences of 32 tokens (first 4 tokens a
prompt, -100). Students: Llama-style 2 × 32 from the same initial weights per seed, trained for the same steps on
the same 512 sequences either alone (`scratch`: next-token cross-entropy) or with `lm_kd` (alpha 0.5, T 1) and each
divergence. Scored on 512 held-out sequences with `Distiller.evaluate` (next-token metrics over real target tokens):
NLL against the data, and agreement / KL(teacher ‖ student) against the teacher.

    PYTHONPATH=src nice -n 10 python bench/lm_kd_quality.py [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics

import torch

from distill import Distiller
from distill.engine.evaluate import lm_metrics

VOCAB, LENGTH, PROMPT = 64, 32, 4


def markov_text(n: int, seed: int, table: torch.Tensor) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        ids = torch.randint(3, VOCAB, (1,), generator=g).tolist()
        while len(ids) < LENGTH:
            ids.append(int(torch.multinomial(table[ids[-1]], 1, generator=g)))
        ids_t = torch.tensor(ids)
        labels = ids_t.clone()
        labels[:PROMPT] = -100
        rows.append({"input_ids": ids_t, "attention_mask": torch.ones_like(ids_t), "labels": labels})
    return rows


def llama(hidden: int, layers: int, seed: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--teacher-epochs", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=6)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(1234)
    table = torch.distributions.Dirichlet(torch.full((VOCAB,), 0.3)).sample((VOCAB,))  # (current, next)
    table[..., :3] = 0  # no special ids
    table = table / table.sum(-1, keepdim=True)
    entropy = float(-(table[3:] * table[3:].clamp_min(1e-30).log()).sum(-1).mean())
    teacher_data, train, test = markov_text(2048, 1, table), markov_text(512, 2, table), markov_text(512, 3, table)
    loader = lambda rows, shuffle, seed=0: torch.utils.data.DataLoader(  # noqa: E731
        rows, batch_size=32, shuffle=shuffle, generator=torch.Generator().manual_seed(seed))

    teacher = llama(96, 4, 100)
    t = Distiller(torch.nn.Linear(1, 1), teacher, method="scratch", lr=1e-2, progress=False, channels_last=False)
    t.fit(loader(teacher_data, True), epochs=args.teacher_epochs)  # the teacher trained alone (its own labels)
    teacher_scores = lm_metrics(teacher, loader(test, False), torch.device("cpu"))
    print(f"teacher: held-out NLL {teacher_scores['nll']:.4f} (students see 512 of its 2,048 training sequences); "
          f"the chain's mean next-token entropy {entropy:.4f}, uniform {torch.log(torch.tensor(VOCAB - 3.0)):.4f}")

    variants = {"scratch (CE only)": ("scratch", {}), "lm_kd forward_kl": ("lm_kd", {"divergence": "forward_kl"}),
                "lm_kd reverse_kl": ("lm_kd", {"divergence": "reverse_kl"}),
                "lm_kd jsd β=0.5": ("lm_kd", {"divergence": "jsd", "beta": 0.5})}
    results: dict[str, list[dict]] = {k: [] for k in variants}
    for seed in args.seeds:
        init = llama(32, 2, seed)
        for name, (method, options) in variants.items():
            student = copy.deepcopy(init)
            kw = {"temperature": 1.0, "alpha": 0.5} if method == "lm_kd" else {}
            d = Distiller(teacher, student, method=method, options=options, lr=1e-2, progress=False,
                          channels_last=False, **kw)
            d.fit(loader(train, True, seed), epochs=args.epochs)
            scores = d.evaluate(loader(test, False))
            results[name].append(scores)
            print(f"seed {seed} {name}: nll {scores['nll']:.4f} agreement {scores['agreement']:.4f} "
                  f"kl {scores['kl_to_teacher']:.4f}", flush=True)

    print("\n| student (2 × 32, equal steps) | held-out NLL | agreement with teacher | KL(teacher ‖ student) |")
    print("|---|---|---|---|")
    for name, rows in results.items():
        cells = []
        for key in ("nll", "agreement", "kl_to_teacher"):
            vals = [r[key] for r in rows]
            spread = f" ± {statistics.stdev(vals):.4f}" if len(vals) > 1 else ""
            cells.append(f"{statistics.mean(vals):.4f}{spread}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\nteacher held-out NLL {teacher_scores['nll']:.4f}; seeds {args.seeds}; mean ± sd over seeds")


if __name__ == "__main__":
    main()

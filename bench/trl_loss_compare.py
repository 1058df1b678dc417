"""Our generalized JSD against TRL's `GKDTrainer.generalized_jsd_loss` (issue 10: "our loss values equal TRL's for the
same β and T"): same (B, T, V) logits, same -100 labels, values and student-logit gradients.

TRL is not a dependency of distill; install it into a separate directory and put it on the path only for this script:

    python -m venv /tmp/trlenv && /tmp/trlenv/bin/pip install --no-deps trl==1.16.0
    /tmp/trlenv/bin/pip install --target /tmp/trlextra datasets     # trl.experimental.gkd imports it
    PYTHONPATH=src:/tmp/trlenv/lib/python3.11/site-packages:/tmp/trlextra TRL_EXPERIMENTAL_SILENCE=1 \
        python bench/trl_loss_compare.py
"""

from __future__ import annotations

import torch

from distill.losses import generalized_jsd


def main() -> None:
    import trl
    from trl.experimental.gkd import GKDTrainer

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    b, t, v = 4, 128, 49152
    student = torch.randn(b, t, v, generator=g) * 3
    teacher = torch.randn(b, t, v, generator=g) * 3
    labels = torch.randint(0, v, (b, t), generator=g)
    labels[:, :16] = -100  # prompt
    labels[1, 100:] = -100  # padding
    print(f"trl {trl.__version__}; logits ({b}, {t}, {v}) float32, {int((labels != -100).sum())} scored tokens")
    print("\n| β | T | ours (chunked) | TRL | \\|diff\\| | max \\|grad diff\\| |")
    print("|---|---|---|---|---|---|")
    for beta in (0.0, 0.1, 0.5, 0.9, 1.0):
        for temp in (1.0, 2.0):
            xs = [student.clone().requires_grad_(True) for _ in range(2)]
            ours = generalized_jsd(xs[0], teacher, beta=beta, temperature=temp, mask=labels != -100)
            theirs = GKDTrainer.generalized_jsd_loss(xs[1], teacher, labels=labels, beta=beta, temperature=temp)
            ours.backward()
            theirs.backward()
            grad = float((xs[0].grad - xs[1].grad).abs().max())
            print(f"| {beta} | {temp} | {ours.item():.7f} | {theirs.item():.7f} | "
                  f"{abs(ours.item() - theirs.item()):.1e} | {grad:.1e} |", flush=True)


if __name__ == "__main__":
    main()

"""Shared fixtures: tiny, seeded, CPU-only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "src" / "distill" / "recipes"

TINY = [
    "teacher.kwargs.hidden=[32]",
    "teacher.epochs=1",
    "student.kwargs.hidden=[8]",
    "train.epochs=1",
    "train.max_steps=3",
    "eval.latency_runs=3",
    "eval.latency_warmup=1",
]


@pytest.fixture
def tiny_overrides() -> list[str]:
    """`--set` overrides that shrink the digits recipe to a few steps (seconds, not minutes)."""
    return list(TINY)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:  # noqa: ANN001
    """Run the CLI in-process: (exit status, stdout, stderr)."""
    from distill.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err

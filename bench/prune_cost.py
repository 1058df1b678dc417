"""Test accuracy of a run's teacher pruned with no fine-tune, for the amounts of its `compress.variants` (the
pruning's immediate cost, beside the fine-tuned rows of the run's report). Not run by CI.

    PYTHONPATH=src python bench/prune_cost.py RUN_DIR
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from distill.compress import prune_channels, prune_unstructured
from distill.deploy import load_run_data
from distill.engine.evaluate import accuracy
from distill.engine.io import load_weights
from distill.models import create_model
from distill.recipe import load_recipe
from distill.variants import parse


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    recipe = load_recipe(args.run_dir / "config.yaml")
    report = json.loads((args.run_dir / "report.json").read_text())
    data = load_run_data(recipe)
    teacher = create_model(recipe.teacher.name, input_shape=data.input_shape, num_classes=data.num_classes,
                           **recipe.teacher.kwargs)
    load_weights(teacher, args.run_dir / "checkpoints" / "teacher.safetensors")
    teacher.eval()
    test = DataLoader(data.test, batch_size=512)
    example = next(iter(test))["inputs"][:2]
    print(f"teacher: {100 * accuracy(teacher, test):.2f}%")
    for name in recipe.compress.variants if recipe.compress else []:
        source, kind, amount = parse(name)
        if source != "teacher" or kind not in ("pruned", "channels"):
            continue
        pruned = prune_unstructured(teacher, amount) if kind == "pruned" else \
            prune_channels(teacher.requires_grad_(True), amount, example).requires_grad_(False)
        tuned = report["models"].get(name, {})
        print(f"{name}: no fine-tune {100 * accuracy(pruned.eval(), test):.2f}%, "
              f"report (fine-tuned) {100 * tuned.get('accuracy', float('nan')):.2f}% — {tuned.get('note', '')}")


if __name__ == "__main__":
    main()

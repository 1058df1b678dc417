"""Hugging Face models from a local directory (never downloaded): `hf-sequence-classifier`.

A recipe names it with the directory: `teacher: {name: hf-sequence-classifier, kwargs: {path: /models/my-bert}}`.
The directory is what `save_pretrained` writes (config.json and the weights). It is read with
`local_files_only=True`, so nothing is fetched whatever `HF_HUB_OFFLINE` says; a directory that is not there is one line
naming it. The model takes the batch's keyword inputs (`input_ids`, `attention_mask`, ...) and returns an output whose
`.logits` is `(B, num_classes)`. A model whose every weight came from the directory (its classification head
included) carries `pretrained = True`, so the pipeline uses it as a trained teacher instead of training it.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import DistillError
from ._registry import register_model


def saved_model_dir(path: str | Path) -> Path:
    """`path` as a directory `save_pretrained` wrote (it has a config.json); otherwise one line saying so."""
    directory = Path(path).expanduser()
    if not (directory / "config.json").is_file():
        where = "does not exist" if not directory.exists() else "has no config.json"
        raise DistillError(
            f"Hugging Face model directory {str(directory)!r} {where}; models are never downloaded: save one with "
            "model.save_pretrained(<dir>) (or copy it there) and set kwargs.path to that local directory"
        )
    return directory


@register_model("hf-sequence-classifier")
def hf_sequence_classifier(*, input_shape: tuple[int, ...], num_classes: int, path: str) -> nn.Module:
    """`AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_classes, local_files_only=True)`.

    `input_shape` is not used (token batches carry their own length)."""
    directory = saved_model_dir(path)
    try:
        from transformers import AutoModelForSequenceClassification
    except ImportError:
        raise DistillError("model 'hf-sequence-classifier' needs transformers: pip install 'distill[hf]'") from None
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            str(directory), num_labels=num_classes, local_files_only=True, output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise DistillError(
            f"cannot load the Hugging Face model in {str(directory)!r} ({' '.join(str(exc).split())[:160]}); "
            "check that the directory is complete and that its head has num_classes outputs"
        ) from None
    model.pretrained = not info.get("missing_keys") and not info.get("mismatched_keys")
    return model

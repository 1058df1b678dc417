"""A run's student, out of the run directory: `export_run` (safetensors or ONNX, optionally int8) and
`load_student` (a ready `nn.Module` from a run directory or a `.safetensors` export).

What rebuilds the student — architecture name and kwargs (from the run's `config.yaml`), input shape and class count
(from `report.json`, or from the dataset when an older run did not record them) — travels inside the exported file
and in a JSON file beside it (`<export>.json`), which for ONNX also holds the check against PyTorch: the largest
absolute logit difference over the test set, both accuracies and their top-1 agreement.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .batch import inputs_of
from .compress.export import (
    export_onnx,
    read_metadata,
    save_safetensors,
    set_onnx_metadata,
    write_json,
)
from .compress.quantize import quantizable_ops, quantize_onnx
from .compress.runtime import OnnxModule, onnx_session
from .config import Recipe, read_recipe
from .data import load_data
from .engine.evaluate import classification_metrics, predict
from .engine.io import load_weights, read_state_dict
from .errors import DistillError, DistillWarning, nearest
from .models import create_model

FORMATS = ("safetensors", "onnx")
ONNX_TOLERANCE = 1e-4  # fp32 ONNX logits must match PyTorch's within this (max abs difference)
CHECK_BATCH = 256  # batch size of the ONNX-vs-PyTorch check over the test set
CALIBRATION_EXAMPLES = 256  # training examples that set static int8 activation ranges


def _run_files(run_dir: Path) -> tuple[Recipe, Path]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DistillError(f"run directory {str(run_dir)!r} not found; pass the directory `distill run` wrote")
    weights = run_dir / "student.safetensors"
    if not weights.is_file():
        raise DistillError(f"run directory {str(run_dir)!r} has no student.safetensors (the run did not finish); "
                           "finish it with `distill run RECIPE --out RUN_DIR --resume`")
    if not (run_dir / "config.yaml").is_file():
        raise DistillError(f"run directory {str(run_dir)!r} has no config.yaml; pass a directory written by `distill run`")
    # structure only: export needs the student and data sections, and a run saved before a method started refusing
    # keys it ignores must still export
    return read_recipe(run_dir / "config.yaml"), weights


def load_run_data(recipe: Recipe) -> Any:
    """The run's dataset (`DataBundle`), loaded as its recipe says: test set for checks, training set for calibration."""
    d = recipe.data
    return load_data(d.name, kwargs=d.kwargs, num_classes=d.num_classes, labelled_fraction=d.labelled_fraction,
                     seed=recipe.seed)


def student_spec(run_dir: Path, recipe: Recipe, data: Any = None) -> dict[str, Any]:
    """What rebuilds the run's student: `{"architecture": {"name", "kwargs"}, "input_shape", "num_classes",
    "class_names"}`; the shape and class count come from `report.json`, else from the dataset (loaded only then)."""
    report_path = Path(run_dir) / "report.json"
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else {}
    ds = report.get("dataset", {})
    shape, num_classes = ds.get("input_shape"), ds.get("num_classes")
    class_names = report.get("explorer", {}).get("class_names") or []
    if shape is None or num_classes is None:  # a run from before the report recorded them
        data = data or load_run_data(recipe)
        shape, num_classes, class_names = list(data.input_shape), data.num_classes, list(data.class_names)
    return {"architecture": {"name": recipe.student.name, "kwargs": dict(recipe.student.kwargs)},
            "input_shape": [int(s) for s in shape], "num_classes": int(num_classes), "class_names": class_names}


def _build(spec: dict[str, Any]) -> nn.Module:
    arch = spec["architecture"]
    return create_model(arch["name"], input_shape=tuple(spec["input_shape"]), num_classes=spec["num_classes"],
                        **arch["kwargs"])


def load_student(path: str | Path) -> nn.Module:
    """The student of a run directory, or of a `.safetensors` file written by `distill export`, rebuilt from its
    architecture name and kwargs, weights loaded (strictly), in eval mode. Input `(B, *input_shape)` -> logits
    `(B, num_classes)`. Raises `DistillError` when the path holds no student."""
    path = Path(path)
    if path.is_dir():
        recipe, weights = _run_files(path)
        return load_weights(_build(student_spec(path, recipe)), weights).eval()
    if path.suffix == ".onnx":
        raise DistillError(f"{str(path)!r} is an ONNX export: run it with onnxruntime.InferenceSession; "
                           "load_student takes a run directory or a .safetensors export")
    model = _build(read_metadata(path))
    try:
        model.load_state_dict(read_state_dict(path), strict=True)
    except RuntimeError as exc:
        raise DistillError(f"weights in {str(path)!r} do not fit the architecture in its metadata "
                           f"({' '.join(str(exc).split())[:200]}); re-export it") from None
    return model.eval()


def _tensor_inputs(batch: Any) -> torch.Tensor:
    x = inputs_of(batch)
    if isinstance(x, dict):
        if set(x) != {"inputs"}:
            raise DistillError(f"ONNX export supports models taking one tensor; this dataset gives {sorted(x)}; "
                               "export --format safetensors instead")
        x = x["inputs"]
    return x.float()


def _calibration(data: Any, seed: int, n: int = CALIBRATION_EXAMPLES, batch: int = 32) -> list[np.ndarray]:
    """`n` training examples, a seeded random subset, as float32 arrays `(batch, *input_shape)`."""
    picks = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    subset = torch.utils.data.Subset(data.train, picks)
    return [_tensor_inputs(b).numpy() for b in DataLoader(subset, batch_size=batch)]


def _check(model: nn.Module, onnx_path: Path, data: Any) -> dict[str, Any]:
    """PyTorch vs ONNX Runtime on the whole test set, in batches of `CHECK_BATCH` (dynamic int8 scales activations
    per call, so its logits depend on the batch): max abs logit difference, accuracies, top-1 agreement."""
    loader = DataLoader(data.test, batch_size=CHECK_BATCH)
    cpu = torch.device("cpu")
    ref, labels = predict(model, loader, cpu)
    got, _ = predict(OnnxModule(onnx_session(onnx_path, threads=torch.get_num_threads())), loader, cpu)
    if got.shape != ref.shape:
        raise DistillError(f"the ONNX model returns logits of shape {tuple(got.shape)}, PyTorch {tuple(ref.shape)}; "
                           "export --format safetensors instead")
    theirs, ours = classification_metrics(ref, labels), classification_metrics(got, labels, ref)
    return {"examples": len(labels), "batch_size": CHECK_BATCH, "max_abs_diff": float((got - ref).abs().max()),
            "accuracy_pytorch": theirs.get("accuracy"), "accuracy_onnx": ours.get("accuracy"),
            "agreement": ours["agreement"]}


def _default_out(run_dir: Path, fmt: str, int8: bool) -> Path:
    return Path(run_dir) / "export" / f"student{'.int8' if int8 else ''}.{fmt}"


def export_run(run_dir: str | Path, fmt: str = "safetensors", *, int8: bool = False,
               out: str | Path | None = None) -> dict[str, Any]:
    """Export the run's student to `out` (default `RUN_DIR/export/student[.int8].<fmt>`) plus `<out>.json`, and
    return that metadata (with `"path"`). ONNX is checked against PyTorch on the test set; `int8` (ONNX only) is
    dynamic for linear-only models, static QDQ calibrated on training examples for conv models. Everything is built
    in a temporary folder and moved into place at the end; any `DistillError` leaves nothing behind."""
    if fmt not in FORMATS:
        raise DistillError(f"unsupported export format {fmt!r}{nearest(fmt, FORMATS)}; use one of {', '.join(FORMATS)}")
    if int8 and fmt != "onnx":
        raise DistillError("--int8 quantizes with onnxruntime; use it with --format onnx")
    run_dir = Path(run_dir)
    recipe, weights = _run_files(run_dir)
    data = load_run_data(recipe) if fmt == "onnx" else None  # test set for the check, training set for calibration
    spec = student_spec(run_dir, recipe, data)
    model = load_weights(_build(spec), weights).eval()
    meta: dict[str, Any] = {"format": f"distill-student/{fmt}", **spec,
                            "source": {"run": run_dir.name, "recipe": recipe.name, "method": recipe.distill.method,
                                       "weights": "student.safetensors"}}
    out = Path(out) if out else _default_out(run_dir, fmt, int8)
    if out.is_dir():
        out = out / _default_out(run_dir, fmt, int8).name
    with tempfile.TemporaryDirectory(prefix="distill-export-") as tmp:
        staged = Path(tmp) / f"student.{fmt}"
        if fmt == "safetensors":
            save_safetensors(model, staged, meta)
        else:
            meta["onnx"] = _export_onnx(model, staged, data, recipe.seed, int8)
            set_onnx_metadata(staged, meta)
        write_json(Path(tmp) / "meta.json", meta)
        try:
            _publish(staged, out)
            _publish(Path(tmp) / "meta.json", out.with_name(out.name + ".json"))
        except OSError as exc:
            out.unlink(missing_ok=True)
            raise DistillError(f"cannot write {str(out)!r} ({exc.strerror}); choose a writable --out") from None
    return {**meta, "path": str(out)}


def _export_onnx(model: nn.Module, dst: Path, data: Any, seed: int, int8: bool) -> dict[str, Any]:
    example = _tensor_inputs(next(iter(DataLoader(data.test, batch_size=2))))
    fp32 = dst.with_name("fp32.onnx") if int8 else dst
    if int8 and not any(p.ndim >= 2 for p in model.parameters()):  # no weight matrix or kernel: refuse before exporting
        raise DistillError("the student has no Linear/MatMul or Conv layers, so --int8 has nothing to quantize; "
                           "export without --int8")
    export_onnx(model, example, fp32)
    info: dict[str, Any] = {"opset": _opset(fp32), "torch": torch.__version__, "onnxruntime": _ort_version()}
    if int8:
        if not quantizable_ops(fp32):  # before calibration data is read: the cheap refusal first
            raise DistillError("the student has no Linear/MatMul or Conv layers, so --int8 has nothing to quantize; "
                               "export without --int8")
        info["int8"] = quantize_onnx(fp32, dst, calibration=_calibration(data, seed))
    info["check"] = _check(model, dst, data)
    if not int8 and info["check"]["max_abs_diff"] > ONNX_TOLERANCE:
        warnings.warn(f"ONNX logits differ from PyTorch's by up to {info['check']['max_abs_diff']:.2e} "
                      f"(tolerance {ONNX_TOLERANCE:g}); check the exported model before deploying it", DistillWarning,
                      stacklevel=2)
    return info


def _opset(path: Path) -> int:
    import onnx

    return next(o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx"))


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _publish(src: Path, dst: Path) -> None:
    """Copy `src` next to `dst` under a temporary name, then rename it over `dst`."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        shutil.copyfile(src, tmp)
        tmp.replace(dst)
    finally:
        tmp.unlink(missing_ok=True)

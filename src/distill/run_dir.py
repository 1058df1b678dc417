"""A run directory's lifecycle (orchestration layer): create it (never over a run unless asked), record its status,
and check that a directory can be resumed with this very recipe."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import yaml

from .engine.checkpoint import CheckpointWarning
from .errors import DistillError


def make_run_dir(out: Path, overwrite: bool) -> Path:
    """Create (or with `overwrite` empty) the run directory and check that it is writable; one-line errors."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise DistillError(f"run directory {str(out)!r} already exists; pass --overwrite or choose --out")
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "checkpoints").mkdir(exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise DistillError(f"cannot write the run directory {str(out)!r} ({exc.strerror}); choose a writable --out") from None
    return out


def write_status(run_dir: Path, status: str, **extra: Any) -> None:
    """`status.json` (`running`, `failed` with the error, `complete`), replaced atomically."""
    doc = {"status": status, "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **extra}
    tmp = run_dir / ".status.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(run_dir / "status.json")


def _first_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            found = _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if a == b else prefix.rstrip(".") or "recipe"


def open_for_resume(run_dir: str | Path, recipe_yaml: str, *, overwrite: bool = False) -> Path:
    """Check that `run_dir` holds a run of this very recipe that can be resumed (read-only; every process may call
    it). Raises `DistillError` naming the fix; warns when there is no complete checkpoint yet (training restarts)."""
    run_dir = Path(run_dir)
    if overwrite:
        raise DistillError("--resume and --overwrite exclude each other; drop one of them")
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise DistillError(f"nothing to resume in {str(run_dir)!r} (no run was started there); run without --resume")
    try:
        saved = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        raise DistillError(f"{str(config)!r} is corrupt; start a new run without --resume") from None
    diff = _first_difference(saved, yaml.safe_load(recipe_yaml))
    if diff:
        raise DistillError(
            f"the recipe differs from the one {str(run_dir)!r} was started with (at {diff}); "
            "resume with the same recipe and --set overrides, or start a new run"
        )
    checkpoints = run_dir / "checkpoints"
    if not checkpoints.is_dir() or not any(p.is_dir() and not p.name.startswith(".") for p in checkpoints.iterdir()):
        warnings.warn(f"no complete checkpoint in {str(checkpoints)!r}; training restarts from step 0",
                      CheckpointWarning, stacklevel=2)
    return run_dir

"""Crash-safe checkpoints and exact resume.

A checkpoint is a directory `checkpoints/<phase>-<step:08d>/` (every `train.checkpoint_every` steps) or
`checkpoints/<phase>-final/` (end of a phase) holding

    model.safetensors       the method's trainable state: student + projectors (the teacher is not part of it)
    optimizer.safetensors   every tensor of `optimizer.state_dict()`, flattened to `state.<param>.<name>`
    state.json              the rest: optimizer hyper-parameters, scheduler, RNG states (python, numpy, torch; one
                            entry per process), data-order position (epoch, batch in epoch, shuffle-generator state at
                            the start of that epoch), step, phase, counters
    manifest.json           sha256 + size of each file above, written LAST

It is written into `checkpoints/.tmp-<name>-<pid>/`, every file fsynced, then renamed into place (and the parent
directory fsynced), so a checkpoint directory without a manifest or with a checksum mismatch can only come from a
torn write or a damaged disk: it is ignored with a warning, never loaded. Serialisation is safetensors + JSON
only -- never pickle. Only the main process writes; every process reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import DistillError, DistillWarning
from ..files import alias_metadata, unique_tensors, with_aliases
from .state import (
    b64,
    join_optimizer_state,
    rng_state,
    set_rng_state,
    split_optimizer_state,
    unb64,
)

FORMAT = 1
FILES = ("model.safetensors", "optimizer.safetensors", "state.json")


class CheckpointWarning(DistillWarning):
    """An incomplete or corrupt checkpoint was found and skipped."""


# ---------------------------------------------------------------------------------------------------------------- io
def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fault(stage: str, count: int) -> None:
    """Test hook for fault injection. `DISTILL_FAULT_SLEEP_S` sleeps after each stage of a write (widening the window
    for an external SIGKILL); `DISTILL_FAULT_KILL=<stage>@<n>` SIGKILLs this process at `stage` of its n-th write."""
    delay = os.environ.get("DISTILL_FAULT_SLEEP_S")
    if delay:
        time.sleep(float(delay))
    target = os.environ.get("DISTILL_FAULT_KILL")
    if target and target == f"{stage}@{count}":
        os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------------------------------- a checkpoint
@dataclass
class Checkpoint:
    """A complete, verified checkpoint on disk (see the module docstring for its files)."""

    path: Path
    state: dict[str, Any]

    @property
    def phase(self) -> str:
        return self.state["phase"]

    @property
    def step(self) -> int:
        return int(self.state["step"])

    @property
    def done(self) -> bool:
        """True for the end-of-phase checkpoint: the phase needs no more training."""
        return bool(self.state["done"])

    def model_state(self) -> dict[str, torch.Tensor]:
        return _load_tensors(self.path / "model.safetensors")

    def optimizer_state(self) -> dict[str, Any]:
        return join_optimizer_state(_load_tensors(self.path / "optimizer.safetensors"), self.state["optimizer"])


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            return with_aliases({k: fh.get_tensor(k) for k in fh.keys()}, fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise DistillError(f"checkpoint file {str(path)!r} is unreadable ({exc}); delete that checkpoint") from None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Verify and read a checkpoint directory. Raises `DistillError` (one line) if it is incomplete or corrupt;
    nothing is unpickled, so a tampered file can be refused but never executed."""
    path = Path(path)
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise DistillError(f"checkpoint {str(path)!r} has no manifest (an interrupted write); delete it")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise DistillError(f"checkpoint {str(path)!r} has a corrupt manifest; delete it") from None
    if manifest.get("format") != FORMAT:
        raise DistillError(f"checkpoint {str(path)!r} has format {manifest.get('format')!r}, expected {FORMAT}")
    for name in FILES:
        entry = files.get(name) if isinstance(files, dict) else None
        f = path / name
        if not isinstance(entry, dict) or not f.is_file():
            raise DistillError(f"checkpoint {str(path)!r} lacks {name}; delete it")
        if f.stat().st_size != entry.get("bytes") or _sha256(f) != entry.get("sha256"):
            raise DistillError(f"checkpoint file {str(f)!r} fails its checksum (truncated or altered); delete it")
    for name in FILES[:2]:  # parse the safetensors headers now, so a bad file is skipped rather than met mid-resume
        try:
            with safe_open(str(path / name), framework="pt"):
                pass
        except (SafetensorError, OSError, ValueError) as exc:
            raise DistillError(f"checkpoint file {str(path / name)!r} is unreadable ({exc}); delete it") from None
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        if not isinstance(state, dict) or not {"phase", "step", "done", "optimizer", "rng"} <= set(state):
            raise ValueError("missing keys")
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        raise DistillError(f"checkpoint {str(path)!r} has a corrupt state.json; delete it") from None
    return Checkpoint(path, state)


# ---------------------------------------------------------------------------------------------------- checkpointer
class Checkpointer:
    """Writes checkpoints for the training loop and finds the newest complete one on resume.

    `every`: steps between interval checkpoints (None: only end-of-phase ones). `keep`: interval checkpoints kept
    per phase (older ones are deleted once a newer one is complete). `resume`: look for checkpoints to continue from;
    without it a phase always starts from step 0. Every process calls `save` (RNG states are gathered); the main
    process writes.
    """

    def __init__(self, directory: str | Path, *, every: int | None, accelerator: Any = None,
                 resume: bool = False, keep: int = 2) -> None:
        self.directory = Path(directory)
        self.every = every
        self.accelerator = accelerator
        self.resume = resume
        self.keep = keep
        self.writes = 0

    @property
    def is_main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    def due(self, step: int) -> bool:
        """Write an interval checkpoint after optimizer step `step`?"""
        return self.every is not None and step > 0 and step % self.every == 0

    # ----------------------------------------------------------------------------------------------------- finding
    def _candidates(self, phase: str) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return [p for p in self.directory.iterdir() if p.is_dir() and p.name.startswith(f"{phase}-")]

    def latest(self, phase: str) -> Checkpoint | None:
        """The newest complete checkpoint of `phase` (its end-of-phase one first), or None. Incomplete or corrupt
        ones, and leftovers of interrupted writes, are skipped with a `CheckpointWarning`."""
        if not self.directory.is_dir():
            return None
        for tmp in sorted(self.directory.glob(f".tmp-{phase}-*")):
            if self.is_main:  # one warning per run, not one per process
                warnings.warn(f"ignoring incomplete checkpoint {tmp.name} (its write was interrupted)",
                              CheckpointWarning, stacklevel=2)
                shutil.rmtree(tmp, ignore_errors=True)

        def order(p: Path) -> tuple[int, int]:
            tail = p.name[len(phase) + 1:]
            return (1, 0) if tail == "final" else (0, int(tail) if tail.isdigit() else -1)

        for path in sorted(self._candidates(phase), key=order, reverse=True):
            try:
                ckpt = load_checkpoint(path)
            except DistillError as exc:
                if self.is_main:
                    warnings.warn(f"ignoring checkpoint {path.name}: {exc}", CheckpointWarning, stacklevel=2)
                continue
            if ckpt.phase == phase:
                return ckpt
        return None

    def resume_point(self, phase: str) -> Checkpoint | None:
        """Where `phase` continues from: None unless resuming."""
        return self.latest(phase) if self.resume else None

    # ----------------------------------------------------------------------------------------------------- writing
    def save(self, *, phase: str, step: int, done: bool, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: Any, position: dict[str, Any], extra: dict[str, Any] | None = None) -> Path | None:
        """Write a checkpoint of `model` (unwrapped), `optimizer`, `scheduler` and the RNG states after `step`.

        `position`: `{"epoch", "batch", "generator"}` -- the next batch to train on is batch `batch` of epoch `epoch`,
        whose shuffle order is re-created from `generator` (the shuffle generator's state when the epoch began).
        Returns the checkpoint path on the main process, None elsewhere.
        """
        rngs = [rng_state()]
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            rngs = gather_object(rngs)  # one entry per process, in rank order
        path = None
        if self.is_main:
            name = f"{phase}-final" if done else f"{phase}-{step:08d}"
            path = self._write(name, phase=phase, step=step, done=done, model=model, optimizer=optimizer,
                               scheduler=scheduler, position=position, rngs=rngs, extra=extra or {})
            self._prune(phase, final=done)
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
        return path

    def _write(self, name: str, *, phase: str, step: int, done: bool, model: torch.nn.Module, optimizer: Any,
               scheduler: Any, position: dict[str, Any], rngs: list[dict[str, Any]], extra: dict[str, Any]) -> Path:
        self.writes += 1
        n = self.writes
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".tmp-{name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        # tied weights (shared storage, which safetensors refuses) are written once, their other names as aliases
        weights, aliases = unique_tensors(model.state_dict())
        save_file(weights, str(tmp / "model.safetensors"), metadata=alias_metadata(aliases) or None)
        _fsync_file(tmp / "model.safetensors")
        _fault("model", n)
        opt_tensors, opt_plain = split_optimizer_state(optimizer.state_dict())
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        _fsync_file(tmp / "optimizer.safetensors")
        _fault("optimizer", n)
        generator = position.get("generator")
        state = {
            "format": FORMAT, "phase": phase, "step": step, "done": done,
            "epoch": position.get("epoch", 0), "batch": position.get("batch", 0),
            "generator": b64(generator) if isinstance(generator, torch.Tensor) else None,
            "optimizer": opt_plain,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rngs, **extra,
        }
        try:
            payload = json.dumps(state, allow_nan=True).encode("utf-8")
        except TypeError as exc:
            raise DistillError(f"cannot write a checkpoint: state is not JSON-serialisable ({exc})") from None
        _fsync_write(tmp / "state.json", payload)
        _fault("state", n)
        files = {f: {"sha256": _sha256(tmp / f), "bytes": (tmp / f).stat().st_size} for f in FILES}
        manifest = {"format": FORMAT, "phase": phase, "step": step, "done": done, "files": files}
        _fsync_write(tmp / "manifest.json", json.dumps(manifest, indent=2).encode("utf-8"))
        _fsync_dir(tmp)
        _fault("manifest", n)
        final = self.directory / name
        if final.exists():  # e.g. the same step reached again after resuming past a corrupt checkpoint
            trash = self.directory / f".trash-{name}-{os.getpid()}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(self.directory)
        _fault("rename", n)
        return final

    def _prune(self, phase: str, *, final: bool) -> None:
        """Keep the newest `keep` interval checkpoints of `phase` (none once its final one exists)."""
        interval = sorted(p for p in self._candidates(phase) if p.name[len(phase) + 1:].isdigit())
        doomed = interval if final else interval[: max(0, len(interval) - self.keep)]
        for path in doomed:
            shutil.rmtree(path, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def restore_rng(ckpt: Checkpoint, process_index: int = 0) -> None:
    """Restore this process's RNG states (rank 0's if the checkpoint came from a different number of processes)."""
    rngs = ckpt.state["rng"]
    set_rng_state(rngs[process_index] if process_index < len(rngs) else rngs[0])


def generator_state(ckpt: Checkpoint) -> torch.Tensor | None:
    """The shuffle generator's state at the start of the checkpoint's epoch, or None."""
    g = ckpt.state.get("generator")
    return unb64(g) if g else None

"""A live teacher: a frozen model run under `torch.inference_mode()` in eval mode on every batch.

On its first batch a `LiveTeacher` picks the fastest *exact* execution for the model (`execution.choose_execution`:
for conv teachers, the fastest of eager / channels_last / conv-BN folding + channels_last / `torch.compile` with
inductor freezing whose logits match eager within 1e-5 on two batch sizes). `torch.compile` is tried only when the
run is long enough to repay its compile time, so the teacher must be told how many batches it will serve
(`expected_calls`; unknown: never compiled). The candidates run on copies of the model taken then (at most one extra
copy at a time for a teacher whose weights exceed `max_copy_share` of the available memory, none when a copy would
take more than half of it); the model itself is never modified (re-create the LiveTeacher if its weights change later).
With `record`, the choice is written to a JSON file once and a resumed run replays it (same float arithmetic).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..batch import inputs_of
from .execution import MAX_COPY_SHARE, choose_execution


class TeacherSource(Protocol):
    def __call__(self, batch: Any) -> torch.Tensor: ...

    def to(self, device: torch.device) -> TeacherSource: ...


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: the teacher never trains and never updates BatchNorm statistics."""
    model.eval()
    model.requires_grad_(False)
    return model


class LiveTeacher:
    """Runs a frozen teacher model on each batch. `autocast` (e.g. `torch.bfloat16`) is an approximate, faster mode."""

    def __init__(
        self,
        model: nn.Module,
        *,
        autocast: torch.dtype | None = None,
        tune: bool = True,
        record: str | Path | None = None,
        expected_calls: int | None = None,
        max_copy_share: float = MAX_COPY_SHARE,
    ) -> None:
        self.model = freeze(model)
        self.autocast = autocast
        self.tune = tune  # pick the fastest exact execution on the first batch
        # `record`: a JSON file holding this run's choice; a resumed run reuses it so its arithmetic is identical
        self.record = Path(record) if record is not None else None
        # how many batches this teacher will serve (the training steps of the phase): decides whether compiling pays
        self.expected_calls = expected_calls
        self.max_copy_share = max_copy_share
        self.execution: dict[str, Any] | None = None  # what was chosen, with the measured max |diff| and speed-up
        self._run: Any = None  # inputs -> logits, the chosen execution

    def to(self, device: torch.device) -> LiveTeacher:
        if torch.device(device) != self.device:
            self.model.to(device)
            self.execution = self._run = None  # re-chosen on the new device (once per device, not per call)
        return self

    @property
    def device(self) -> torch.device:
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def __call__(self, batch: Any) -> torch.Tensor:
        self.model.eval()  # a user's code may have flipped it back to train mode
        ctx = (
            torch.autocast(device_type=self.device.type, dtype=self.autocast)
            if self.autocast is not None
            else torch.autocast(device_type=self.device.type, enabled=False)  # never inherit the student's autocast
        )
        inputs = inputs_of(batch)
        if self._run is None:
            prefer = None
            if self.record is not None and self.record.is_file():
                try:
                    prefer = json.loads(self.record.read_text()).get("execution")
                except (json.JSONDecodeError, OSError, AttributeError):
                    prefer = None  # unreadable: choose afresh
            with torch.autocast(device_type=self.device.type, enabled=False):  # choose in the teacher's own precision
                self.execution, self._run = choose_execution(
                    self.model, inputs, enabled=self.tune, autocast=self.autocast, prefer=prefer,
                    expected_calls=self.expected_calls, max_copy_share=self.max_copy_share,
                )
            if self.record is not None and prefer is None:
                tmp = self.record.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.execution))
                tmp.replace(self.record)
        with torch.inference_mode(), ctx:
            logits = self._run(inputs).float()
        # Inference tensors cannot be saved for backward; a clone of (B, C) logits is cheap.
        return logits.clone()

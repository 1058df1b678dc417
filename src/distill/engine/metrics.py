"""`metrics.jsonl`: one JSON object per line, written by the main process only, flushed as it goes."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricsLog:
    """Append-only JSONL log; also forwards numeric values to Accelerate trackers (e.g. TensorBoard) when present."""

    def __init__(self, path: str | Path | None, accelerator: Any = None) -> None:
        self.path = Path(path) if path is not None else None
        self.accelerator = accelerator
        self.records: list[dict[str, Any]] = []

    def log(self, record: dict[str, Any]) -> None:
        clean = {k: (float(v) if hasattr(v, "item") else v) for k, v in record.items()}
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in clean.items()}
        self.records.append(clean)
        is_main = self.accelerator is None or self.accelerator.is_main_process
        if self.path is not None and is_main:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(clean) + "\n")
        if self.accelerator is not None and getattr(self.accelerator, "trackers", None):
            phase = clean.get("phase", "train")
            scalars = {f"{phase}/{k}": v for k, v in clean.items() if isinstance(v, (int, float)) and k != "step"}
            self.accelerator.log(scalars, step=clean.get("step"))

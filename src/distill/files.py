"""Atomic JSON writes for manifests: a reader finds the old file or the whole new one, never a half-written one
(temp file in the same directory, fsync, rename). Caches write their manifest last, so a manifest means complete."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, doc: Any) -> None:
    tmp = path.parent / f".{path.name}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(doc, indent=2))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)

"""`distill tune`'s search space: the keys it can search and their default ranges, `--space` and `--budget` parsing,
and which keys mean something to a method (a key the method ignores is never sampled)."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from .errors import DistillError, nearest
from .methods import METHODS

# name -> (kind, default range or choices). Floats are searched on a log scale except alpha.
SPACE: dict[str, tuple[str, Any]] = {
    "method": ("choice", ["kd", "dkd"]),
    "temperature": ("log", (1.0, 16.0)),
    "alpha": ("float", (0.1, 1.0)),
    "standardize": ("choice", [False, True]),
    "lr": ("log", (3e-4, 3e-2)),
}


def parse_budget(text: str) -> float:
    """`"20m"`, `"90s"`, `"1.5h"`, `"1h30m"` -> seconds. Raises `DistillError`."""
    parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*", text or "")
    if not parts or not any(parts.groups()):
        raise DistillError(f"--budget {text!r} is not a duration; write e.g. 20m, 90s, 1h or 1h30m")
    h, m, s = (float(g) if g else 0.0 for g in parts.groups())
    return 3600 * h + 60 * m + s


def parse_space(items: list[str] | None) -> dict[str, tuple[str, Any]]:
    """`--space` entries: a key (`lr`) keeps its default range; `lr=1e-4:1e-2` sets a float range; `method=kd,dkd`
    or `standardize=true` sets choices. No entries: the whole default space. Unknown keys: `DistillError`."""
    if not items:
        return dict(SPACE)
    space: dict[str, tuple[str, Any]] = {}
    for item in items:
        for part in [p for p in item.split(";") if p.strip()]:
            key, _, raw = part.partition("=")
            key = key.strip()
            if key not in SPACE:
                raise DistillError(f"unknown search-space key {key!r}{nearest(key, SPACE)}; "
                                   f"choose from {', '.join(SPACE)}")
            kind, default = SPACE[key]
            if not raw.strip():
                space[key] = (kind, default)
            elif kind == "choice":
                values = [yaml.safe_load(v) for v in raw.split(",") if v.strip()]
                bad = [v for v in values if v not in default]
                if not values or bad:
                    raise DistillError(f"--space {part!r}: choose {key} from {default}")
                space[key] = (kind, values)
            else:
                try:
                    lo, hi = (float(v) for v in raw.split(":"))
                except ValueError:
                    raise DistillError(f"--space {part!r}: write a range as {key}=LOW:HIGH, e.g. lr=1e-4:1e-2") from None
                if not 0 < lo <= hi or (key == "alpha" and hi > 1):
                    raise DistillError(f"--space {part!r}: need 0 < LOW <= HIGH{' <= 1' if key == 'alpha' else ''}")
                space[key] = (kind, (lo, hi))
    return space


def space_json(space: dict[str, tuple[str, Any]]) -> str:
    """The space as canonical JSON (a resumed tune must search the same one)."""
    return json.dumps({k: [kind, list(v) if isinstance(v, tuple) else v] for k, (kind, v) in sorted(space.items())})


def applies(key: str, method: str) -> bool:
    """Does the search key mean anything to `method`? (`temperature`/`alpha`: its `uses`; other keys but `lr` and
    `method`: one of its options.) Keys it would ignore are not sampled (a recipe that sets them is refused)."""
    cls = METHODS.get(method)
    if key in ("temperature", "alpha"):
        return key in cls.uses
    return key in ("lr", "method") or key in cls.Options.model_fields


def suggest(trial: Any, space: dict[str, tuple[str, Any]], method: str) -> dict[str, Any]:
    """One Optuna trial's parameters: the method first, then only the keys that mean something to it."""
    params: dict[str, Any] = {}
    for key, (kind, v) in sorted(space.items(), key=lambda kv: kv[0] != "method"):  # the method first
        if not applies(key, params.get("method", method)):
            continue  # a conditional parameter (TPE handles the missing value)
        if kind == "choice":
            params[key] = trial.suggest_categorical(key, list(v))
        else:
            params[key] = trial.suggest_float(key, v[0], v[1], log=kind == "log")
    return params

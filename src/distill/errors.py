"""User-facing errors.

Anything a user can cause (bad recipe, missing file, shape or class-count mismatch) raises `DistillError` with one
sentence that names the problem *and* the fix. The CLI prints it on one line to stderr and exits with status 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DistillError(Exception):
    """An error the user can fix; its message is one line naming the problem and the fix."""


class DistillWarning(UserWarning):
    """Something the user should know that does not stop the run (e.g. an incomplete checkpoint was skipped);
    the CLI prints it as one `warning: ...` line."""


def nearest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """`" (did you mean 'x', 'y'?)"` for the closest choices, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""

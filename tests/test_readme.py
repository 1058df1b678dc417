"""The README's Python example runs as written (docs that rot are worse than none)."""

from __future__ import annotations

import re

from conftest import ROOT


def test_readme_python_example_runs() -> None:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    assert len(code.strip().splitlines()) <= 16
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - our own README
    result = scope["d"].evaluate(scope["val"])
    assert 0.0 <= result["accuracy"] <= 1.0 and result["kl_to_teacher"] >= 0.0

"""Installed like a user installs it: build the wheel, install it into a fresh folder, and use it from a directory
that has nothing to do with the repository (recipes come from inside the package)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, TINY


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    wheels = tmp_path_factory.mktemp("wheels")
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("distill-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"distill/recipes/digits.yaml", "distill/recipes/fashion-mnist.yaml"} <= set(names)
    target = tmp_path_factory.mktemp("site")
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr[-2000:]
    return target


def _distill(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "distill", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_the_wheel_runs_from_an_unrelated_directory(installed: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _distill(installed, elsewhere, "--version")
    assert where.returncode == 0 and where.stdout.strip() == "distill 0.1.0", where.stderr
    probe = subprocess.run([sys.executable, "-c", "import distill; print(distill.__file__)"], cwd=elsewhere,
                           env={**os.environ, "PYTHONPATH": str(installed)}, capture_output=True, text=True)
    assert Path(probe.stdout.strip()).is_relative_to(installed)  # the wheel's copy, not the source tree

    listing = _distill(installed, elsewhere, "list")
    assert listing.returncode == 0, listing.stderr
    for name in ("kd", "dkd", "born_again", "ensemble", "mlp", "cnn", "digits", "fashion-mnist"):
        assert f" {name} " in listing.stdout, name

    tiny = [a for s in TINY for a in ("--set", s)]
    first = _distill(installed, elsewhere, "demo", "--no-progress", *tiny)
    assert first.returncode == 0, first.stderr[-2000:]
    assert (elsewhere / "runs" / "digits" / "report.html").is_file()
    marker = elsewhere / "runs" / "digits" / "mine.txt"
    marker.write_text("keep me")
    second = _distill(installed, elsewhere, "demo", "--no-progress", *tiny)
    assert second.returncode == 0, second.stderr[-2000:]
    assert marker.read_text() == "keep me"  # the first run is untouched
    assert (elsewhere / "runs" / "digits-2" / "report.html").is_file()

    refused = _distill(installed, elsewhere, "demo", "--no-progress", "--out", "runs/digits", *tiny)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "already exists" in refused.stderr and "--overwrite" in refused.stderr
    assert marker.read_text() == "keep me"

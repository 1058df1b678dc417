"""Exact resume and fault injection (issue 4): a run killed with SIGKILL -- on purpose inside a checkpoint write, or
at a random moment -- and resumed ends with weights bit-identical to an uninterrupted run, having lost at most one
checkpoint interval. The kill happens in a child process; the reference run and the resumes run in-process (fast).
Bit-exactness holds on one machine with one intra-op thread (`OMP_NUM_THREADS=1` in the child, `torch.set_num_threads(1)`
here): floating-point reductions must happen in the same order."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from distill.cli import main
from distill.engine.checkpoint import CheckpointWarning

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import crash  # noqa: E402  (the trial logic is shared with bench/crash.py)


def _events(out: Path) -> dict[str, tuple[str, int]]:
    return {r["phase"]: (r["event"], r["step"]) for r in crash.metrics(out) if r.get("event") in ("resumed", "phase_restored")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    main(crash.argv(out))
    return out


# checkpoint writes: teacher 1-4 (steps 4, 8, 12, final), scratch 5-8, distilled 9-12
@pytest.mark.parametrize(
    "fault, phase, resumed_from",
    [("model@3", "teacher", 8),  # killed after writing model.safetensors of teacher step 12: dropout RNG must resume
     ("manifest@10", "distilled", 4)],  # everything written but not yet renamed into place
)
def test_killed_inside_a_checkpoint_write_resumes_bit_identical(tmp_path, reference, fault, phase, resumed_from):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "distill", *crash.argv(out)]
    proc = subprocess.run(cmd, env={**crash.env(), "DISTILL_FAULT_KILL": fault}, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert any(p.name.startswith(".tmp-") for p in (out / "checkpoints").iterdir())
    assert not (out / "report.json").exists()
    with pytest.warns(CheckpointWarning, match="incomplete checkpoint"):
        main(crash.argv(out, resume=True))
    events = _events(out)
    assert events[phase] == ("resumed", resumed_from)
    if phase == "distilled":  # finished phases are loaded, not retrained
        assert events["teacher"][0] == events["scratch"][0] == "phase_restored"
    for name in ("student.safetensors", "checkpoints/teacher.safetensors", "checkpoints/scratch.safetensors"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert not any(p.name.startswith(".tmp-") for p in (out / "checkpoints").iterdir())


@pytest.mark.parametrize("seed", [101])
def test_random_sigkill_then_resume(tmp_path, reference, seed):
    result = crash.trial(tmp_path, reference, seed, resume=lambda out: _resume_quiet(out))
    assert result["identical"], result
    assert all(0 <= n <= crash.EVERY for n in result["lost_steps"]), result
    assert result["ok"], result


def _resume_quiet(out: Path) -> int:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CheckpointWarning)
        main(crash.argv(out, resume=True))
    return 0

"""Teacher execution choice (teachers/execution.py): exactness, when compiling pays, the copy-memory rule, replay on
resume, and no deprecated TorchScript path or silenced warnings. Timings are faked where a decision depends on them,
so no test rests on how fast this machine is."""

from __future__ import annotations

import inspect
import json
import time
import warnings

import pytest
import torch
from torch import nn

from distill.batch import forward_logits
from distill.models import create_model
from distill.teachers import LiveTeacher, execution
from distill.teachers.execution import EXACT_TOL, Candidate, choose_execution


def _teacher(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_model("cnn", input_shape=(1, 8, 8), num_classes=10, channels=[8, 16]).eval().requires_grad_(False)


def _fake_times(monkeypatch: pytest.MonkeyPatch, ms: dict[str, float]) -> None:
    """Replace the interleaved timing with fixed per-call times (milliseconds) per candidate name."""
    monkeypatch.setattr(execution, "median_times", lambda runs, inputs, repeats: {k: ms[k] / 1e3 for k in runs})


@pytest.fixture
def no_deprecated_jit(monkeypatch: pytest.MonkeyPatch):
    """torch.jit's tracing/scripting entry points fail if called, and a DeprecationWarning raised by a call from our
    code (warnings are attributed to the caller) is an error, not a silenced line."""
    def banned(*a, **k):
        raise AssertionError("deprecated torch.jit path used")

    for name in ("trace", "script", "freeze", "optimize_for_inference"):
        monkeypatch.setattr(torch.jit, name, banned)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", category=DeprecationWarning, module=r"distill(\.|$)")
        yield


@pytest.mark.parametrize("name", ["channels_last", "fold_bn+channels_last", "compiled"])
def test_each_execution_is_exact_on_two_batch_sizes(name: str, no_deprecated_jit) -> None:
    """Every candidate, the real `torch.compile` (inductor freezing) included, reproduces eager logits within the
    tolerance on the full batch and on a smaller one (a last batch), and leaves the user's model untouched."""
    teacher = _teacher()
    weights = {k: v.clone() for k, v in teacher.state_dict().items()}
    x = torch.rand(32, 1, 8, 8)
    record, run = choose_execution(teacher, x, prefer=name)
    assert record["execution"] == name  # built directly: the recorded-choice path checks it on two batch sizes
    with torch.inference_mode():
        for b in (x, x[:7]):
            ref = teacher(b)
            assert (run(b) - ref).abs().max() <= EXACT_TOL * max(1.0, float(ref.abs().max()))
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in weights.items())
    assert teacher.features[0][0].weight.is_contiguous()


def test_the_chosen_execution_is_the_fastest_exact_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A faster candidate whose logits are off (e.g. a graph that baked in a batch-size branch) is never chosen."""
    wrong = Candidate("wrong", lambda: (lambda b: forward_logits(teacher, b) + 1e-2))
    original = execution.candidates
    monkeypatch.setattr(execution, "candidates", lambda m, i: [wrong, *original(m, i)])
    _fake_times(monkeypatch, {"eager": 10.0, "wrong": 1.0, "channels_last": 8.0, "fold_bn+channels_last": 6.0})
    teacher = _teacher()
    x = torch.rand(32, 1, 8, 8)
    record, _ = choose_execution(teacher, x)
    assert record["candidates"]["wrong"]["max_abs_diff"] > 1e-3 and "ms" not in record["candidates"]["wrong"]
    assert record["execution"] == "fold_bn+channels_last" and record["speedup"] == pytest.approx(10 / 6)


def test_compile_only_when_the_run_repays_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage 1 (estimate): unknown or short runs never compile. Stage 2 (measured): a compile that takes longer than
    the run's saving is discarded; a long run keeps it. The compile is faked: it sleeps 50 ms (a lower bound on the
    measured compile time) and runs eager; per-call times are fixed (eager 10 ms, best copy 6 ms, compiled 3 ms)."""
    built: list[int] = []

    def fake_compile(model: nn.Module, inputs, **kw) -> execution.Run:
        built.append(1)
        time.sleep(0.05)
        return lambda b: forward_logits(model, b)

    monkeypatch.setattr(execution, "build_compiled", fake_compile)
    _fake_times(monkeypatch, {"eager": 10.0, "channels_last": 8.0, "fold_bn+channels_last": 6.0, "compiled": 3.0})
    teacher, x = _teacher(), torch.rand(16, 1, 8, 8)

    for calls, floor_s, tried, chosen in [
        (None, 0.0, False, "fold_bn+channels_last"),  # unknown run length: never compiled
        (10, 1.5, False, "fold_bn+channels_last"),  # 10 x 6 ms < 1.5 s: could not pay even if free per call
        (5, 0.0, True, "fold_bn+channels_last"),  # tried, but 5 x 3 ms saved < the >= 50 ms compile: discarded
        (10**7, 1.5, True, "compiled"),  # 10^7 x 3 ms saved >> compile
    ]:
        monkeypatch.setattr(execution, "COMPILE_S_FLOOR", floor_s)
        n = len(built)
        live = LiveTeacher(teacher, expected_calls=calls)
        live((x,))
        rec = live.execution
        assert rec["compile"]["tried"] is tried and (len(built) > n) is tried
        assert rec["execution"] == chosen, rec
        if tried:
            assert rec["compile"]["pays"] is (chosen == "compiled") and rec["compile"]["compile_s"] >= 0.05


class _Copies:
    """Counts live copies made by fake candidates (each holds one until garbage)."""

    alive = 0
    most = 0


class _Copy:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        _Copies.alive += 1
        _Copies.most = max(_Copies.most, _Copies.alive)

    def __call__(self, b) -> torch.Tensor:
        return forward_logits(self.model, b)

    def __del__(self) -> None:
        _Copies.alive -= 1


def test_copies_respect_available_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights within the share: copies built together. Above it: never more than one extra copy at once, the
    winner rebuilt if a later one was tried. A copy over half the free memory: no copies at all, eager only."""
    teacher, x = _teacher(), torch.rand(16, 1, 8, 8)
    nbytes = execution.weight_bytes(teacher)
    names = ["a", "b", "c"]
    monkeypatch.setattr(execution, "candidates", lambda m, i: [Candidate(k, lambda: _Copy(m)) for k in names])
    _fake_times(monkeypatch, {"eager": 10.0, "a": 8.0, "b": 5.0, "c": 7.0})  # b wins, then c is tried
    for avail, plan, most in [(100 * nbytes, "together", 3), (3 * nbytes, "one_at_a_time", 1), (nbytes, "none", 0)]:
        monkeypatch.setattr(execution, "available_memory", lambda device, a=avail: a)
        _Copies.alive = _Copies.most = 0
        record, run = choose_execution(teacher, x)  # compile is not tried: run length unknown
        assert record["memory"]["plan"] == plan and _Copies.most == most, (plan, _Copies.most)
        assert record["execution"] == ("b" if plan != "none" else "eager")
        assert _Copies.alive == (1 if plan != "none" else 0)  # only the winner's copy outlives the choice
        with torch.inference_mode():
            assert torch.allclose(run(x), teacher(x))
        del run


def test_copy_plan_thresholds() -> None:
    assert execution.copy_plan(25, 100, 0.25) == "together"
    assert execution.copy_plan(26, 100, 0.25) == "one_at_a_time"
    assert execution.copy_plan(50, 100, 0.25) == "one_at_a_time"
    assert execution.copy_plan(51, 100, 0.25) == "none"
    assert execution.copy_plan(10**12, None, 0.25) == "together"  # memory unknown: as before the rule existed
    assert execution.available_memory(torch.device("cpu")) is None or execution.available_memory(torch.device("cpu")) > 0


def test_recorded_compiled_choice_replays_without_a_new_contest(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resume whose first attempt chose `compiled` compiles again even though this LiveTeacher was not told the run
    length, and builds nothing else."""
    monkeypatch.setattr(execution, "build_compiled", lambda model, inputs, **kw: (lambda b: forward_logits(model, b)))
    record = tmp_path / "teacher_execution.json"
    record.write_text(json.dumps({"execution": "compiled"}))
    live = LiveTeacher(_teacher(), record=record)
    live((torch.rand(16, 1, 8, 8),))
    assert live.execution["execution"] == "compiled" and live.execution["reason"] == "recorded choice of this run"
    assert list(live.execution["candidates"]) == ["compiled"]
    assert json.loads(record.read_text()) == {"execution": "compiled"}  # the record is not rewritten


def test_no_deprecated_path_and_no_silenced_warnings() -> None:
    """No TorchScript candidate, and the choice adds no warning filters (nothing is silenced)."""
    src = inspect.getsource(execution) + inspect.getsource(LiveTeacher)
    for banned in ("jit.trace(", "jit.script(", "jit.freeze(", "optimize_for_inference(", "catch_warnings",
                   "simplefilter", "filterwarnings"):
        assert banned not in src, banned
    before = list(warnings.filters)
    live = LiveTeacher(_teacher(), expected_calls=3)
    live((torch.rand(16, 1, 8, 8),))
    assert warnings.filters == before and "torchscript" not in live.execution["candidates"]


def test_a_recorded_choice_that_no_longer_builds_is_chosen_afresh(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(model, inputs, **kw):
        raise RuntimeError("compiler unavailable")

    monkeypatch.setattr(execution, "build_compiled", broken)
    record = tmp_path / "teacher_execution.json"
    record.write_text(json.dumps({"execution": "compiled"}))
    live = LiveTeacher(_teacher(), record=record)
    x = torch.rand(16, 1, 8, 8)
    out = live((x,))
    assert live.execution["execution"] != "compiled" and "compiler unavailable" in live.execution["replay_failed"]["compiled"]
    with torch.no_grad():
        assert torch.allclose(out, live.model(x), atol=1e-5)


def test_the_recipe_sets_the_copy_share(tmp_path) -> None:
    """`distill.teacher_copy_share` reaches the live teacher the pipeline builds."""
    from conftest import RECIPES, TINY

    from distill.pipeline import _source, prepare
    from distill.recipe import load_recipe

    recipe = load_recipe(RECIPES / "digits.yaml", [*TINY, "distill.teacher_copy_share=0.05"])

    class Acc:
        is_main_process, num_processes = True, 1

    source = _source(prepare(recipe), torch.nn.Linear(1, 1), tmp_path, Acc())
    assert source.max_copy_share == 0.05

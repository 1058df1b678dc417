"""Checkpoint format units: state round-trips exactly; the newest *complete* checkpoint wins; torn or damaged ones are
skipped with a warning (never loaded); rotation keeps the last two; an existing name is replaced atomically."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from distill.engine.checkpoint import Checkpointer, CheckpointWarning, load_checkpoint
from distill.engine.state import (
    join_optimizer_state,
    rng_state,
    set_rng_state,
    split_optimizer_state,
)
from distill.errors import DistillError


def _trained(steps: int = 3) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.9**s)
    for _ in range(steps):
        model(torch.randn(5, 3)).square().mean().backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, opt, sched


def _save(ck: Checkpointer, step: int, done: bool = False):
    model, opt, sched = _trained(step)
    return ck.save(phase="distilled", step=step, done=done, model=model, optimizer=opt, scheduler=sched,
                   position={"epoch": 0, "batch": step, "generator": torch.Generator().manual_seed(1).get_state()})


def test_optimizer_state_round_trips_exactly():
    _, opt, _ = _trained()
    tensors, plain = split_optimizer_state(opt.state_dict())
    json.dumps(plain)  # the non-tensor part really is JSON
    back = join_optimizer_state(tensors, json.loads(json.dumps(plain)))
    ref = opt.state_dict()
    assert back["param_groups"][0]["lr"] == ref["param_groups"][0]["lr"]
    for pid, slots in ref["state"].items():
        for name, value in slots.items():
            assert torch.equal(back["state"][pid][name], value), (pid, name)


def test_rng_states_round_trip():
    state = json.loads(json.dumps(rng_state()))
    draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == draws


def test_written_checkpoint_is_verified_and_complete(tmp_path):
    ck = Checkpointer(tmp_path, every=1)
    path = _save(ck, 2)
    c = load_checkpoint(path)
    assert (c.phase, c.step, c.done) == ("distilled", 2, False)
    model, _, _ = _trained(2)
    for k, v in model.state_dict().items():
        assert torch.equal(c.model_state()[k], v)
    manifest = json.loads((path / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.safetensors", "optimizer.safetensors", "state.json"}
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_newest_complete_wins_and_damaged_ones_are_skipped(tmp_path):
    ck = Checkpointer(tmp_path, every=1, resume=True, keep=5)
    for step in (1, 2, 3):
        _save(ck, step)
    (tmp_path / ".tmp-distilled-00000004-999").mkdir()  # a torn write
    data = (tmp_path / "distilled-00000003" / "model.safetensors").read_bytes()
    (tmp_path / "distilled-00000003" / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    (tmp_path / "distilled-00000002" / "manifest.json").unlink()  # never finished
    with pytest.warns(CheckpointWarning) as record:
        best = ck.resume_point("distilled")
    assert best is not None and best.step == 1
    text = " ".join(str(w.message) for w in record)
    assert "incomplete" in text and "checksum" in text and "no manifest" in text
    assert not (tmp_path / ".tmp-distilled-00000004-999").exists()  # the leftover is cleaned up


def test_final_beats_intervals_and_rotation_keeps_two(tmp_path):
    ck = Checkpointer(tmp_path, every=1, resume=True)
    for step in (1, 2, 3, 4):
        _save(ck, step)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["distilled-00000003", "distilled-00000004"]
    _save(ck, 5, done=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["distilled-final"]
    assert ck.resume_point("distilled").done
    assert Checkpointer(tmp_path, every=1).resume_point("distilled") is None  # not resuming: start fresh


def test_same_name_is_replaced(tmp_path):
    ck = Checkpointer(tmp_path, every=1)
    _save(ck, 2)
    (tmp_path / "distilled-00000002" / "state.json").write_text("{}")  # damaged
    _save(ck, 2)  # reached again after resuming from an older checkpoint
    assert load_checkpoint(tmp_path / "distilled-00000002").step == 2


def test_corrupt_manifest_is_one_clear_line(tmp_path):
    path = _save(Checkpointer(tmp_path, every=1), 1)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(DistillError, match="corrupt manifest") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


def test_tied_weights_are_written_once_and_restored_tied(tmp_path):
    """A model whose output head shares the embedding's weight (a tied LM): the checkpoint stores it once, and the
    restored state has both names, so a strict load into a fresh tied model gives the same weights, still tied."""
    from safetensors import safe_open

    def tied() -> torch.nn.Module:
        m = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.Linear(8, 50, bias=False))
        m[1].weight = m[0].weight
        return m

    torch.manual_seed(0)
    model = tied()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    path = Checkpointer(tmp_path, every=1).save(phase="p", step=1, done=False, model=model, optimizer=opt,
                                                 scheduler=sched, position={"epoch": 0, "batch": 1})
    with safe_open(str(path / "model.safetensors"), framework="pt") as fh:
        assert len(list(fh.keys())) == 1
    fresh = tied()
    fresh.load_state_dict(load_checkpoint(path).model_state())
    assert torch.equal(fresh[0].weight, model[0].weight) and fresh[1].weight is fresh[0].weight

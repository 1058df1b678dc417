"""Non-finite losses (issue 4): a step whose loss or gradient is NaN/Inf makes no update and is counted; too many in a
row abort the run with a clear message and keep the last good checkpoint."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distill.config import TrainConfig
from distill.engine.checkpoint import Checkpointer, load_checkpoint
from distill.engine.loop import NonFiniteLossError, fit


class Flaky(nn.Module):
    """Regression whose loss is NaN (`how="loss"`) or has an Inf/NaN gradient (`how="grad"`) on chosen calls.
    Records the student's weights at every call, so the test can see whether the previous step updated them."""

    def __init__(self, bad_calls: set[int] | None = None, bad_from: int | None = None, how: str = "loss") -> None:
        super().__init__()
        self.student = nn.Linear(4, 1)
        self.bad_calls, self.bad_from, self.how = bad_calls or set(), bad_from, how
        self.calls = 0
        self.seen: list[torch.Tensor] = []

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        x, y = batch
        self.seen.append(self.student.weight.detach().clone())
        bad = self.calls in self.bad_calls or (self.bad_from is not None and self.calls >= self.bad_from)
        self.calls += 1
        loss = ((self.student(x).squeeze(-1) - y) ** 2).mean()
        if bad and self.how == "loss":
            loss = loss * float("nan")
        elif bad:  # finite loss (0 added), non-finite gradient: d sqrt(u)/du at u = 0 is inf
            loss = loss + (self.student.weight.sum() * 0.0).abs().sqrt()
        return {"loss": loss}


def _loader(n: int = 64) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(-1)), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(0))


def _cfg(**kw: Any) -> TrainConfig:
    return TrainConfig(epochs=1, lr=0.05, optimizer="sgd", scheduler="constant", log_every=1, **kw)


@pytest.mark.parametrize("how", ["loss", "grad"])
def test_nonfinite_step_is_skipped_and_counted(how):
    method = Flaky(bad_calls={2, 3, 6}, how=how)
    summary = fit(method, _loader(), _cfg(max_nonfinite=3), accelerator=Accelerator(cpu=True), phase="t", progress=False)
    assert summary["steps"] == 8 and summary["skipped_steps"] == 3
    seen = method.seen
    for k in range(len(seen) - 1):  # weights seen at call k+1 differ from call k exactly when step k updated
        updated = not torch.equal(seen[k], seen[k + 1])
        assert updated == (k not in {2, 3, 6}), k
    assert torch.isfinite(method.student.weight).all()


def test_too_many_consecutive_nonfinite_steps_abort_keeping_the_last_good_checkpoint(tmp_path):
    method = Flaky(bad_from=5)
    ck = Checkpointer(tmp_path, every=2)
    with pytest.raises(NonFiniteLossError) as err:
        fit(method, _loader(), _cfg(max_nonfinite=3, checkpoint_every=2), accelerator=Accelerator(cpu=True),
            phase="distilled", progress=False, checkpointer=ck)
    msg = str(err.value)
    assert "\n" not in msg and "3 consecutive" in msg and "train.lr" in msg
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == ["distilled-00000002", "distilled-00000004"]  # no final, no torn write
    last = load_checkpoint(tmp_path / "distilled-00000004")
    assert torch.equal(last.model_state()["student.weight"], method.seen[4])  # weights after the 4th good step
    assert torch.isfinite(method.student.weight).all()

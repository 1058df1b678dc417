"""Gradient accumulation in the one training loop (`train.grad_accum`, `Distiller(grad_accum=...)`): k micro-batches
per optimizer step give the update of one batch k times as large -- each micro-batch weighted by its share of the
window's rows (labelled next-token positions for LMs, examples for classifiers), not a mean of micro-batch means --
also for a shorter last window; a non-finite micro-batch skips the whole update; a run killed inside a window resumes
bit-identical (checkpoints sit on window edges)."""

from __future__ import annotations

import copy

import pytest
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from distill.api import Distiller
from distill.batch import loss_units
from distill.config import TrainConfig
from distill.engine.checkpoint import Checkpointer
from distill.engine.loop import fit
from distill.methods import build_method
from distill.teachers import LiveTeacher


def _classifier_data(batch_size: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(0))


def _classifiers() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)), nn.Linear(6, 3)


def _train(teacher: nn.Module, student: nn.Module, loader: DataLoader, accum: int, epochs: int = 2, **kw) -> nn.Module:
    d = Distiller(teacher, student, lr=0.1, optimizer="sgd", scheduler="constant", progress=False,
                  channels_last=False, grad_accum=accum, **kw)
    d.fit(loader, epochs=epochs)
    return student


def _assert_same(a: nn.Module, b: nn.Module, atol: float = 1e-6) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q, p, atol=atol, rtol=1e-5, msg=lambda m: f"{name}: {m}")


def test_classifier_window_equals_one_big_batch_also_a_short_last_window() -> None:
    """64 examples: batches of 48 (then 16) vs micro-batches of 12 accumulated 4 at a time, whose last window is
    12 + 4 examples: weighting by examples gives the same weights; a mean of micro-batch means would not."""
    teacher, student = _classifiers()
    one = _train(teacher, copy.deepcopy(student), _classifier_data(48), accum=1, temperature=2.0, alpha=0.5)
    acc = _train(teacher, copy.deepcopy(student), _classifier_data(12), accum=4, temperature=2.0, alpha=0.5)
    _assert_same(one, acc)
    assert not torch.allclose(one.weight, student.weight)  # it trained


pytest.importorskip("transformers")
from hf_models import collate  # noqa: E402
from lm_models import RaggedLM, tiny_llama  # noqa: E402


def _lm_loader(batch_size: int) -> DataLoader:
    return DataLoader(RaggedLM(16), batch_size=batch_size, shuffle=True, collate_fn=collate,
                      generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("options", [{"head": "chunked"}, {"head": "logits"}])
def test_lm_window_equals_one_big_batch(options: dict) -> None:
    """lm_kd on ragged rows: batch 8 vs 4 + 4 accumulated. The micro-batches hold different numbers of next-token
    targets, so only token weighting gives the same weights (checked: weighting micro-batches equally does not)."""
    teacher, student = tiny_llama(hidden=48, seed=1), tiny_llama(hidden=32, seed=0)
    counts = [loss_units(build_method("lm_kd", student, None).prepare_batch(b)) for b in _lm_loader(4)]
    assert len(set(counts)) > 1  # the case that needs token weighting
    kw = {"method": "lm_kd", "temperature": 1.0, "alpha": 0.5, "options": options}
    one = _train(teacher, copy.deepcopy(student), _lm_loader(8), accum=1, **kw)
    acc = _train(teacher, copy.deepcopy(student), _lm_loader(4), accum=2, **kw)
    _assert_same(one, acc, atol=2e-6)
    assert any(not torch.allclose(p, q) for p, q in zip(one.parameters(), student.parameters()))
    from distill.methods.lm_kd import LMKD

    with pytest.MonkeyPatch.context() as mp:  # weighting the micro-batches equally is measurably wrong
        mp.setattr(LMKD, "units", lambda self, batch: 1)
        equal = _train(teacher, copy.deepcopy(student), _lm_loader(4), accum=2, **kw)
    assert max(float((p - q).detach().abs().max()) for p, q in zip(one.parameters(), equal.parameters())) > 1e-4


def test_units_count_the_labelled_next_token_positions() -> None:
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8, 0], [5, 6, 7, 0, 0]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]),
             "labels": torch.tensor([[-100, -100, 7, 8, -100], [-100, 6, 7, -100, -100]])}
    method = build_method("lm_kd", tiny_llama(hidden=32), None)
    assert loss_units(method.prepare_batch(batch)) == 4  # targets 7, 8 | 6, 7
    assert loss_units((torch.zeros(5, 3), torch.zeros(5, dtype=torch.long))) == 5  # a classifier batch: its examples
    assert loss_units((torch.zeros(5, 3), torch.zeros(5, 4))) == 5  # multi-label (float) targets: still examples


def test_keyword_batch_goes_through_the_same_preparation() -> None:
    """`method(batch=...)` gets the next-token shift (and its prepared batch recorded) like `method(batch)`."""
    teacher, student = tiny_llama(hidden=48, seed=1), tiny_llama(hidden=32, seed=0)
    method = build_method("lm_kd", student, LiveTeacher(teacher, tune=False), temperature=1.0, alpha=0.5)
    batch = next(iter(_lm_loader(4)))
    positional, units = method(batch)["loss"], method.units(method.last_batch)
    method.last_batch = None
    torch.testing.assert_close(method(batch=batch)["loss"], positional)
    assert method.units(method.last_batch) == units == loss_units(method.prepare_batch(batch)) > 0
    assert not torch.equal(method.last_batch["labels"], batch["labels"])  # next-token targets, as positionally


class _Crashing(nn.Module):
    """A plain module (no Method pre-hook: units come from the batch) that dies on forward call `crash_at`."""

    def __init__(self, crash_at: int | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.student = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.2), nn.Linear(8, 3))
        self.calls = 0
        self.crash_at = crash_at

    def forward(self, batch) -> dict:  # noqa: ANN001
        self.calls += 1
        if self.crash_at is not None and self.calls == self.crash_at:
            raise KeyboardInterrupt("killed")
        x, y = batch
        return {"loss": nn.functional.cross_entropy(self.student(x), y)}


def test_killed_inside_a_window_resumes_bit_identical(tmp_path) -> None:  # noqa: ANN001
    """Micro-batches of 8, 3 per step (64 examples: windows of 3, 3, 2 per epoch), 2 epochs, a checkpoint every step;
    killed on micro-batch 10 (the middle of epoch 1's first window, after step 3), resumed from step 3: the same weights as the
    uninterrupted run, bit for bit (dropout RNG and data order included)."""
    cfg = TrainConfig(epochs=2, lr=0.05, optimizer="adam", grad_accum=3, checkpoint_every=1)
    full = _Crashing()
    summary = fit(full, _classifier_data(8), cfg, accelerator=Accelerator(cpu=True), phase="p", progress=False)
    assert summary["steps"] == 6
    killed = _Crashing(crash_at=10)
    with pytest.raises(KeyboardInterrupt):
        fit(killed, _classifier_data(8), cfg, accelerator=Accelerator(cpu=True), phase="p", progress=False,
            checkpointer=Checkpointer(tmp_path, every=1))
    resumed = _Crashing()
    fit(resumed, _classifier_data(8), cfg, accelerator=Accelerator(cpu=True), phase="p", progress=False,
        checkpointer=Checkpointer(tmp_path, every=1, resume=True))
    assert resumed.calls == 8  # epoch 1 whole: the interrupted window again, then the rest
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


class _NaNOnce(nn.Module):
    """A first window (calls 1-2) whose micro-batch `bad_call` has loss * `bad_value` (NaN: a non-finite window)."""

    def __init__(self, bad_call: int, bad_value: float = float("nan")) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.student = nn.Linear(6, 3)
        self.calls, self.bad_call, self.bad_value = 0, bad_call, bad_value

    def forward(self, batch) -> dict:  # noqa: ANN001
        self.calls += 1
        x, y = batch
        loss = nn.functional.cross_entropy(self.student(x), y)
        if self.bad_value == 0.0 and self.calls <= 2:
            return {"loss": loss * 0.0}
        return {"loss": loss * self.bad_value if self.calls == self.bad_call else loss}


def test_a_nonfinite_micro_batch_skips_its_whole_window() -> None:
    cfg = TrainConfig(epochs=1, lr=0.05, optimizer="sgd", scheduler="constant", grad_accum=2, log_every=1)
    events = []

    class Log:
        def log(self, record: dict) -> None:
            events.append(record)

    bad = _NaNOnce(bad_call=1)  # the first micro-batch of the first window
    start = bad.student.weight.detach().clone()
    summary = fit(bad, _classifier_data(8), cfg, accelerator=Accelerator(cpu=True), phase="p", progress=False,
                  log=Log())
    assert summary["skipped_steps"] == 1 and summary["steps"] == 4
    assert [e["step"] for e in events if e.get("event") == "nonfinite_skip"] == [0]
    losses = [e["loss"] for e in events if "loss" in e]
    assert torch.isnan(torch.tensor(losses[0])) and all(torch.isfinite(torch.tensor(v)) for v in losses[1:])
    # the same run with a zero loss in the first window (SGD: a zero gradient moves nothing) ends on the same weights
    zero = _NaNOnce(bad_call=1, bad_value=0.0)
    fit(zero, _classifier_data(8), cfg, accelerator=Accelerator(cpu=True), phase="p", progress=False)
    assert not torch.equal(bad.student.weight, start)
    torch.testing.assert_close(bad.student.weight, zero.student.weight, atol=1e-7, rtol=0)
    ref = _NaNOnce(bad_call=0)  # never bad: the first window's update is really missing from `bad`
    fit(ref, _classifier_data(8), cfg, accelerator=Accelerator(cpu=True), phase="p", progress=False)
    assert not torch.allclose(bad.student.weight, ref.student.weight, atol=1e-4)


def test_on_policy_micro_batches_of_one_update_draw_their_own_samples() -> None:
    """lm_kd on-policy under accumulation: every micro-batch gets its own generation seed (no two alike), keyed by
    (update, micro-batch) -- the first micro-batch keeps the seed it has without accumulation -- both through the loop
    (on_step once per update) and as the HF Trainer calls it (on_step once per micro-batch, same global step)."""
    teacher, student = tiny_llama(hidden=48, seed=1), tiny_llama(hidden=32, seed=0)
    options = {"on_policy": 1.0, "max_new_tokens": 3}
    d = Distiller(teacher, student, method="lm_kd", options=options, temperature=1.0, alpha=0.5, lr=1e-2,
                  progress=False, channels_last=False, grad_accum=2)
    d.fit(_lm_loader(4), epochs=1)  # 16 rows: 4 micro-batches, 2 updates
    log = d.method.generation_log
    assert [(g["step"], g["micro"]) for g in log] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert len({g["seed"] for g in log}) == 4 and log[0]["seed"] == 1 and log[2]["seed"] == 3

    method = build_method("lm_kd", tiny_llama(hidden=32, seed=0), LiveTeacher(teacher, tune=False),
                          temperature=1.0, alpha=0.5, options=options)
    for update in (0, 0, 1, 1):  # the Trainer's pattern
        method.on_step(update, 2)
        method(next(iter(_lm_loader(4))))
    assert [(g["step"], g["micro"], g["seed"]) for g in method.generation_log] == \
        [(g["step"], g["micro"], g["seed"]) for g in log]


def _partly_labelled(batch_size: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    y[torch.rand(64, generator=g) < 0.4] = -100  # 40% unlabelled
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(0))


def test_scratch_weights_by_labelled_examples_and_inexact_methods_warn() -> None:
    """The student alone on partly labelled data counts labelled examples, so it stays exact; methods whose terms
    average over different rows (kd on partly labelled data, relation losses) warn once that accumulation is close to,
    not exactly, one big batch; kd on labelled data does not warn."""
    _, student = _classifiers()
    trained = []
    for size, accum in ((48, 1), (12, 4)):
        method = build_method("scratch", copy.deepcopy(student), None)
        cfg = TrainConfig(epochs=2, lr=0.1, optimizer="sgd", scheduler="constant", grad_accum=accum,
                          channels_last=False)
        fit(method, _partly_labelled(size), cfg, accelerator=Accelerator(cpu=True), phase="p", progress=False)
        trained.append(method.student)
    _assert_same(*trained)

    import warnings

    from distill.errors import DistillWarning

    teacher, _ = _classifiers()
    for data, method, options, warns in ((_classifier_data, "kd", {}, False), (_partly_labelled, "kd", {}, True),
                                         (_classifier_data, "rkd", {}, True)):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)) if method == "rkd" else copy.deepcopy(student)
            _train(teacher, model, data(12), accum=2, epochs=1, method=method, options=options,
                   **({"alpha": 0.5} if method == "kd" else {}))
        notes = [str(w.message) for w in seen if issubclass(w.category, DistillWarning) and "grad_accum" in str(w.message)]
        assert len(notes) == (1 if warns else 0), (method, notes)


DDP_SCRIPT = '''
import sys, torch
from accelerate import Accelerator
from safetensors.torch import save_file
from test_grad_accum import TokenTagger, ragged_tokens
from distill.config import TrainConfig
from distill.engine.loop import fit

acc = Accelerator(cpu=True)
model = TokenTagger()
cfg = TrainConfig(epochs=1, lr=0.5, optimizer="sgd", scheduler="constant", grad_accum=2)
fit(model, torch.utils.data.DataLoader(ragged_tokens(), batch_size=4), cfg, accelerator=acc, phase="p", progress=False)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{sys.argv[1]}/rank{acc.process_index}.safetensors")
'''


class TokenTagger(nn.Module):
    """A per-token classifier (embedding + linear): its loss is a mean over the labelled tokens."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.student = nn.Sequential(nn.Embedding(11, 8), nn.Linear(8, 5))

    def forward(self, batch) -> dict:  # noqa: ANN001
        x, y = batch
        return {"loss": nn.functional.cross_entropy(self.student(x).reshape(-1, 5), y.reshape(-1))}


def ragged_tokens() -> TensorDataset:
    """32 rows of 6 tokens; row i has 1..6 labelled positions (the rest -100)."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 11, (32, 6), generator=g), torch.randint(0, 5, (32, 6), generator=g)
    keep = torch.randint(1, 7, (32,), generator=g)
    y[torch.arange(6)[None] >= keep[:, None]] = -100
    return TensorDataset(x, y)


def test_two_processes_with_different_token_counts_stay_identical_and_equal_one_big_batch(tmp_path) -> None:  # noqa: ANN001
    """2 processes x micro-batch 4 x grad_accum 2 on token batches whose labelled counts differ between processes:
    both processes end on the same weights (one scale and one global token count on every process), and those are the
    weights of 1 process at batch 16 (the global mean over all labelled tokens)."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    script = tmp_path / "ddp_accum.py"
    script.write_text(DDP_SCRIPT)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=f"{root / 'src'}:{root / 'tests'}", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
           "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port), str(script),
           str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = TokenTagger()
    cfg = TrainConfig(epochs=1, lr=0.5, optimizer="sgd", scheduler="constant")
    fit(one, DataLoader(ragged_tokens(), batch_size=16), cfg, accelerator=Accelerator(cpu=True), phase="p",
        progress=False)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    for name, want in one.state_dict().items():
        torch.testing.assert_close(ranks[1][name], ranks[0][name], atol=1e-6, rtol=0, msg=name)
        torch.testing.assert_close(ranks[0][name], want, atol=1e-5, rtol=0, msg=name)

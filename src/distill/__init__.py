"""distill: knowledge distillation — a big teacher into a small, fast student, with an honest report."""

from importlib.metadata import PackageNotFoundError, version

from .api import Distiller
from .deploy import load_student
from .losses import binary_kd_loss, hard_loss, hinton_loss, kd_loss
from .models import create_model

try:
    __version__ = version("distill")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
__all__ = ["Distiller", "binary_kd_loss", "create_model", "hard_loss", "hinton_loss", "kd_loss", "load_student"]

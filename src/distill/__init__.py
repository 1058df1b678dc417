"""distill: knowledge distillation — a big teacher into a small, fast student, with an honest report."""

from .api import Distiller
from .deploy import load_student
from .losses import binary_kd_loss, hard_loss, hinton_loss, kd_loss
from .models import create_model

__version__ = "0.1.0"
__all__ = ["Distiller", "binary_kd_loss", "create_model", "hard_loss", "hinton_loss", "kd_loss", "load_student"]

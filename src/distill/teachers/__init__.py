"""Teacher output *sources*. A distillation method asks `teacher(batch)` for logits and does not care whether they
come from a live model, an offline cache, or an ensemble. A source is any object with

    __call__(batch) -> Tensor   # teacher logits for the batch, detached, e.g. (B, C) or (B, T, V)
    to(device) -> source

Sources are deliberately *not* `nn.Module`s held as submodules of a method, so `accelerator.prepare(method)` never
wraps the teacher for DDP and the optimizer never sees its parameters.
"""

from .cache import CachedTeacher
from .ensemble import EnsembleTeacher
from .live import LiveTeacher, TeacherSource, freeze

__all__ = ["CachedTeacher", "EnsembleTeacher", "LiveTeacher", "TeacherSource", "freeze"]

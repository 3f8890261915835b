"""lte: Learn To be Efficient. Structured, router-selected FFN sparsity for transformers."""

from .config import LTEConfig, TrainConfig
from .io import load, save
from .models import load_model
from .sparsify import get_mode, reset_stats, set_backend, set_mode, sparsify, stats

__all__ = [
    "LTEConfig", "TrainConfig", "load_model", "sparsify", "set_mode", "get_mode", "set_backend", "stats",
    "reset_stats", "save", "load",
]
__version__ = "0.1.0"

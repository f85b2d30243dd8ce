"""Activation-memory savers for training a frozen base: recompute instead of store."""
from .chunked_loss import chunked_linear_cross_entropy
from .rmsnorm import rms_norm
from .swiglu import swiglu

__all__ = ["chunked_linear_cross_entropy", "rms_norm", "swiglu"]

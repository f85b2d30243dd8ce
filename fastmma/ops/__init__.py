"""Fused ops and their backend dispatch (see `backend`)."""
from .backend import BACKENDS, requested_backend, resolve
from .norm_adapter import mma_adapter, rms_norm_adapter, rms_norm_adapter_by_expert

__all__ = ["BACKENDS", "mma_adapter", "requested_backend", "resolve", "rms_norm_adapter", "rms_norm_adapter_by_expert"]

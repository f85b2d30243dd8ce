"""Fused ops and their backend dispatch (see `backend`)."""
from .backend import BACKENDS, requested_backend, resolve
from .norm_adapter import rms_norm_adapter, rms_norm_adapter_by_expert

__all__ = ["BACKENDS", "requested_backend", "resolve", "rms_norm_adapter", "rms_norm_adapter_by_expert"]

"""Trainable adapter modules."""
from .mma import MMAAdapter

__all__ = ["MMAAdapter"]

"""Backend selection for fused ops.

`FASTMMA_BACKEND` in {auto, reference, torch, triton, cpp} forces one backend; `auto`
picks Triton for CUDA tensors and the C++ extension for CPU tensors when they are
available, else plain PyTorch. Backends register their implementations per op name.
"""
from __future__ import annotations

import os
import warnings
from typing import Callable

BACKENDS = ("auto", "reference", "torch", "triton", "cpp")
_IMPLEMENTATIONS: dict[tuple[str, str], Callable] = {}
_AVAILABILITY: dict[str, Callable[[], bool]] = {}
_warned: set[str] = set()


def register(op_name: str, backend: str, fn: Callable) -> Callable:
    """Register `fn` as `backend`'s implementation of `op_name`."""
    if backend not in BACKENDS or backend == "auto":
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS[1:]}")
    _IMPLEMENTATIONS[(op_name, backend)] = fn
    return fn


def register_availability(backend: str, probe: Callable[[], bool]) -> None:
    """Say how to tell whether `backend` can run in this process (e.g. its extension is built)."""
    _AVAILABILITY[backend] = probe


def requested_backend() -> str:
    choice = os.environ.get("FASTMMA_BACKEND", "auto").strip().lower() or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"FASTMMA_BACKEND={choice!r} is not a backend; set it to one of {', '.join(BACKENDS)}")
    return choice


def is_available(backend: str) -> bool:
    probe = _AVAILABILITY.get(backend)
    return True if probe is None else bool(probe())


def resolve(op_name: str, device_type: str) -> tuple[str, Callable]:
    """The backend name and implementation of `op_name` for tensors on `device_type`."""
    choice = requested_backend()
    if choice == "auto":
        choice = _auto_backend(op_name, device_type)
    fn = _IMPLEMENTATIONS.get((op_name, choice))
    if fn is None:
        raise RuntimeError(f"fastmma op {op_name!r} has no {choice!r} backend; "
                           f"available: {sorted(b for (o, b) in _IMPLEMENTATIONS if o == op_name)}")
    if not is_available(choice):
        raise RuntimeError(f"FASTMMA_BACKEND={choice} was requested but that backend cannot run here "
                           f"(see the README's install section); unset FASTMMA_BACKEND to pick one automatically")
    return choice, fn


def has_implementation(op_name: str, device_type: str) -> bool:
    """Whether the backend chosen for `device_type` implements `op_name` (for optional fast paths)."""
    choice = requested_backend()
    if choice == "auto":
        choice = _auto_backend(op_name, device_type)
    return (op_name, choice) in _IMPLEMENTATIONS and is_available(choice)


def _auto_backend(op_name: str, device_type: str) -> str:
    preferred = "triton" if device_type == "cuda" else "cpp"
    if (op_name, preferred) in _IMPLEMENTATIONS and is_available(preferred):
        return preferred
    if preferred == "cpp" and (op_name, "cpp") in _IMPLEMENTATIONS and "cpp" not in _warned:
        _warned.add("cpp")
        warnings.warn("fastmma's C++ extension is not built; CPU ops fall back to PyTorch "
                      "(reinstall with `pip install -e .` to build it)", RuntimeWarning, stacklevel=3)
    return "torch"

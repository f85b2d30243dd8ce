"""Adapter methods other than MMA plug into fastmma.patch/unpatch/merge/save/load through this registry.

A method registers its config class with a `MethodHandler`. A model patched by such a
method carries `model._fastmma` with an attribute `method` naming it (MMA's state has
`method == "mma"`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class MethodHandler:
    name: str                      # e.g. "mwa"; stored as `model._fastmma.method` and in adapter_config.json
    config_class: type
    patch: Callable                # (model, config) -> model
    unpatch: Callable              # (model) -> model
    merge: Callable                # (model, **kwargs) -> model (may raise with a clear message)
    save: Callable                 # (model, directory) -> Path
    load: Callable                 # (model, directory, saved_config: dict) -> model
    parameters: Callable | None = None   # (model) -> {name: trainable Parameter}


_HANDLERS: dict[str, MethodHandler] = {}


def register_method(handler: MethodHandler) -> MethodHandler:
    _HANDLERS[handler.name] = handler
    return handler


def handler_for_config(config) -> MethodHandler | None:
    for handler in _HANDLERS.values():
        if isinstance(config, handler.config_class):
            return handler
    return None


def handler_for_model(model) -> MethodHandler | None:
    state = getattr(model, "_fastmma", None)
    method = getattr(state, "method", None)
    return _HANDLERS.get(method) if method not in (None, "mma") else None


def handler_named(name: str) -> MethodHandler | None:
    return _HANDLERS.get(name)

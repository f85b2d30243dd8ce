"""The KV cache's keyword and output field: `cache` from transformers 5.24 on, `past_key_values` before.

Both names are read here so that fastmma neither misses a cache nor triggers the deprecation shims.
"""
from __future__ import annotations

import dataclasses

CACHE_KEYWORDS = ("cache", "past_key_values")


def cache_in(kwargs: dict):
    """The cache passed to a layer or model under either keyword (None if none)."""
    return next((kwargs[name] for name in CACHE_KEYWORDS if kwargs.get(name) is not None), None)


def without_cache(kwargs: dict) -> dict:
    """`kwargs` with the cache, under whichever keyword it came, set to None."""
    return dict(kwargs, **{name: None for name in CACHE_KEYWORDS if name in kwargs})


def cache_field(output_class) -> str:
    """The name of a transformers ModelOutput class's cache field."""
    names = {field.name for field in dataclasses.fields(output_class)}
    return next(name for name in CACHE_KEYWORDS if name in names)


def output_cache(outputs):
    """The cache a transformers ModelOutput returned."""
    return getattr(outputs, cache_field(type(outputs)))

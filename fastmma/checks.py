"""Checks of configuration values: predicates, and one loop that applies a table of rules to a dataclass."""
from __future__ import annotations

import math


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite real number (int or float; not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive_int(value) -> bool:
    return is_int(value) and value >= 1


def positive_number(value) -> bool:
    return is_number(value) and value > 0


def non_negative_int(value) -> bool:
    return is_int(value) and value >= 0


def non_negative_number(value) -> bool:
    return is_number(value) and value >= 0


def is_bool(value) -> bool:
    return isinstance(value, bool)


def require_positive_int(name: str, value, note: str = "") -> None:
    """Raise ValueError naming `name` unless `value` is an int >= 1 (not a bool)."""
    if not positive_int(value):
        raise ValueError(f"{name} must be a positive integer{note}; got {value!r}")


def check_fields(owner, rules: dict) -> None:
    """Raise ValueError naming the first field of `owner` that breaks its rule.

    rules: field name -> (test of a valid value, what the value must be, whether None is allowed).
    """
    for name, (valid, requirement, none_allowed) in rules.items():
        value = getattr(owner, name)
        if not (value is None and none_allowed) and not valid(value):
            raise ValueError(f"{type(owner).__name__}.{name}={value!r} must be {requirement}")

"""What autocast would cast an op's operands to: one rule for the code that runs GEMMs itself."""
from __future__ import annotations

import torch


def autocast_dtype(device_type: str, *dtypes: torch.dtype) -> torch.dtype | None:
    """The low-precision dtype autocast casts operands of these dtypes to on `device_type`, or None when
    autocast is off there or leaves them alone (it never casts float64 or non-floating operands)."""
    if not torch.is_autocast_enabled(device_type):
        return None
    if any(not dtype.is_floating_point or dtype == torch.float64 for dtype in dtypes):
        return None
    return torch.get_autocast_dtype(device_type)

"""Fused ops and their backend dispatch (see `backend`)."""
from .backend import BACKENDS, requested_backend, resolve
from .norm_adapter import mma_adapter, rms_norm_adapter, rms_norm_adapter_by_expert, rms_norm_adapter_folded
from .norm_adapter_linear import rms_norm_adapter_linear
from . import triton_backend  # noqa: F401,E402  (registers the "triton" backend when triton is installed)

__all__ = ["BACKENDS", "mma_adapter", "requested_backend", "resolve", "rms_norm_adapter", "rms_norm_adapter_by_expert",
           "rms_norm_adapter_folded", "rms_norm_adapter_linear"]
from . import cpp_backend  # noqa: F401,E402  (registers the "cpp" backend when the C++ extension is built)
from . import cpp_swiglu  # noqa: F401,E402
from . import cpp_cross_entropy  # noqa: F401,E402
from . import cpp_few_rows_linear  # noqa: F401,E402
from . import cpp_rotary  # noqa: F401,E402
from . import cpp_rms_norm  # noqa: F401,E402

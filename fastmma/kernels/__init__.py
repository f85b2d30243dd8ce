"""Triton kernels for the fused ops: pure @triton.jit functions and their launch helpers.

Rows are x viewed as [M, D]; a RowLayout (layout.py) says which up-projection table
each row uses. Launch helpers take contiguous tensors and assume validated shapes;
fastmma.ops.triton_backend checks inputs and wraps them in autograd Functions.

Importing this package defines the kernels: set TRITON_INTERPRET=1 before importing
it to run them on the CPU.
"""
from .adapter_linear import launch_adapter_linear
from .layout import RowLayout, per_sample_layout, per_token_layout
from .norm_adapter_backward import NormAdapterGrads, launch_norm_adapter_backward
from .norm_adapter_forward import launch_norm_adapter_forward

__all__ = ["NormAdapterGrads", "RowLayout", "launch_adapter_linear", "launch_norm_adapter_backward",
           "launch_norm_adapter_forward", "per_sample_layout", "per_token_layout"]

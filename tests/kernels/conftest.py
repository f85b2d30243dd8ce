"""Fixtures of the kernel tests."""
import pytest

from fastmma.ops import cpp_backend


@pytest.fixture
def poisoned_outputs():
    """Every tensor the C++ kernels allocate starts as NaN instead of whatever memory held, so an element a
    kernel forgets to write fails the comparison."""
    cpp_backend._C.set_poison_outputs(True)
    yield
    cpp_backend._C.set_poison_outputs(False)

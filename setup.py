"""Build script: package metadata lives in pyproject.toml; this adds the C++ CPU kernels in csrc/.

The extension is built with torch.utils.cpp_extension, so install with
`pip install --no-build-isolation -e .` after torch is installed (scripts/install.sh does this).
Set FASTMMA_SKIP_CPP=1 to install without it (fastmma then falls back to PyTorch on CPU).
"""
import glob
import os
import sys

from setuptools import setup


def cpp_extension():
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if not sources or os.environ.get("FASTMMA_SKIP_CPP") == "1":
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("fastmma: torch is not importable at build time; skipping the C++ extension "
              "(install torch first, then `pip install --no-build-isolation -e .`)", file=sys.stderr)
        return [], {}
    extension = CppExtension(
        "fastmma._C",
        sources,
        extra_compile_args=["-O3", "-fopenmp"],
        extra_link_args=["-fopenmp"],
    )
    return [extension], {"build_ext": BuildExtension.with_options(use_ninja=False)}


ext_modules, cmdclass = cpp_extension()
setup(ext_modules=ext_modules, cmdclass=cmdclass)

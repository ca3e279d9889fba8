"""Build of the C++ extension ``lstmkit._C`` (the fused backend's kernels).

All package metadata lives in ``pyproject.toml``; this file only adds the extension module. It
imports torch, so it needs torch installed before the build and no build isolation:

    pip install torch==2.13.0 'setuptools>=68' wheel
    pip install --no-build-isolation -e '.[dev]'

(``make`` does exactly that). After changing a file in ``src/lstmkit/backends/csrc/``, run the
second line again, or ``python setup.py build_ext --inplace``. Without the extension lstmkit
still works: ``backend='auto'`` falls back to the reference loop with a warning.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

CSRC = Path("src/lstmkit/backends/csrc")
SOURCES = sorted(str(p) for p in CSRC.glob("*.cpp"))

# -march=native: the extension is always compiled on the machine that runs it (an editable
# install by `make`, never a distributed wheel), so it may use every instruction that CPU has.
# -fopenmp: at::parallel_for only runs in parallel when the including code is built with OpenMP;
# the runtime is the libgomp torch already loaded. -Wno-unknown-pragmas: torch's vec headers carry
# pragmas for other compilers.
CXX_FLAGS = ["-O3", "-march=native", "-fopenmp", "-Wno-unknown-pragmas"]

setup(
    ext_modules=[
        CppExtension(
            "lstmkit._C",
            SOURCES,
            extra_compile_args={"cxx": CXX_FLAGS},
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension},
)

"""The ``cupy`` backend: CUDA kernels from the ``.cu`` files of the top-level ``cuda/`` folder (shipped with
the package), compiled at run time by CuPy (``RawModule``, cached) and launched on torch's current stream.

A missing CuPy or GPU is one log line (the backend is then unavailable). The kernels have not yet been checked
on a GPU against the reference (``tests/test_cuda.py``), so this backend declines every operation and the
``torch`` backend serves; CI compiles every source with nvcc (``tests/test_cuda_sources.py``).
"""
from __future__ import annotations

import functools

from ..resources import data_path

NAME = "cupy"
KERNELS = {
    "compact_matmul": ("gather_k_matmul", "scatter_k_matmul_t", "accumulate_k_weight"),
    "lstm_pointwise": ("lstm_pointwise_forward", "lstm_pointwise_backward"),
}


def sources():
    """``{name: path}`` of every ``.cu`` file."""
    return {path.stem: path for path in sorted(data_path("cuda").glob("*.cu"))}


@functools.lru_cache(maxsize=None)
def _cupy():
    try:
        import cupy
    except ImportError:
        return None
    return cupy


def available():
    if _cupy() is None:
        return False, "CuPy is not installed (pip install .[cuda])"
    import torch
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    return True, ""


def declines(op, device, dtype, plan=None):
    if device.type != "cuda":
        return f"tensors on {device}"
    return "its kernels have not been checked on a GPU yet"


@functools.lru_cache(maxsize=None)
def module(name):
    """The compiled ``RawModule`` of ``cuda/<name>.cu`` (CuPy caches the binary on disk too)."""
    cupy = _cupy()
    if cupy is None:
        raise RuntimeError("CuPy is not installed (pip install .[cuda])")
    path = sources().get(name)
    if path is None:
        raise ValueError(f"no CUDA source {name!r}; available: {', '.join(sources())}")
    return cupy.RawModule(code=path.read_text(), options=("-std=c++17",), name_expressions=None)


def kernel(module_name, function):
    return module(module_name).get_function(function)

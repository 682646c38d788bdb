"""The CUDA sources in ``cuda/``, compiled at run time by CuPy (``RawModule``, cached), and the backend choice.

``backend(tensor)`` is ``"cupy"`` for CUDA tensors when CuPy and a GPU are present, else ``"torch"``;
``ONMT_STRUCTDROP_BACKEND=torch|cupy`` forces one. A missing CuPy is one log line, not an error. The kernels are
not yet called by the compacted products (``compact.py`` runs torch everywhere): they wait for a GPU run that
checks them (``tests/test_cuda.py``); CI compiles every source with nvcc (``tests/test_cuda_sources.py``).
"""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parents[1] / "cuda"
KERNELS = {
    "compact_matmul": ("gather_k_matmul", "scatter_k_matmul_t", "accumulate_k_weight"),
    "lstm_pointwise": ("lstm_pointwise_forward", "lstm_pointwise_backward"),
}
logger = logging.getLogger(__name__)


def sources():
    """``{name: path}`` of every ``.cu`` file."""
    return {path.stem: path for path in sorted(SOURCE_DIR.glob("*.cu"))}


@functools.lru_cache(maxsize=None)
def _cupy():
    try:
        import cupy
    except ImportError:
        logger.info("CuPy is not installed (pip install .[cuda]): CUDA tensors use the torch backend")
        return None
    return cupy


def backend(tensor=None):
    forced = os.environ.get("ONMT_STRUCTDROP_BACKEND")
    if forced not in (None, "", "torch", "cupy"):
        raise ValueError(f"ONMT_STRUCTDROP_BACKEND must be torch or cupy, got {forced!r}")
    if forced == "torch" or (tensor is not None and not tensor.is_cuda):
        return "torch"
    if _cupy() is None:
        if forced == "cupy":
            raise RuntimeError("ONMT_STRUCTDROP_BACKEND=cupy but CuPy is not installed (pip install .[cuda])")
        return "torch"
    return "cupy"


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

"""The ``cupy`` backend: CUDA kernels from the ``.cu`` files of the top-level ``cuda/`` folder (shipped with
the package), compiled at run time by CuPy (``RawModule``, cached) and launched on torch's current stream, on
torch tensors without copies (their device pointers are the kernels' arguments).

What it serves: the seam's step primitives (kept products that read the weight's kept rows in place, the fused
cell) on float32 CUDA tensors; sequences and whole layers go to the ``torch`` backend. The kernels have not yet
been checked on a GPU against the reference (``tests/test_cuda.py``, run by ``scripts/gpu_check.sh``), so until
they have, the backend serves only when ``ONMT_STRUCTDROP_CUPY=trial`` asks for it and declines otherwise. A
missing CuPy or GPU is one log line (the backend is then unavailable). CI compiles every source with nvcc
(``tests/test_cuda_sources.py``).
"""
from __future__ import annotations

import functools
import os

from ..resources import data_path

NAME = "cupy"
TRIAL_ENV = "ONMT_STRUCTDROP_CUPY"
KERNELS = {
    "compact_matmul": ("gather_k_matmul", "scatter_k_matmul_t", "accumulate_k_weight"),
    "lstm_pointwise": ("lstm_pointwise_forward", "lstm_pointwise_backward"),
}
TILE = 16  # compact_matmul.cu's tile: blocks of TILE x TILE threads
CELL_BLOCK = 256


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
    import torch
    if device.type != "cuda":
        return f"tensors on {device}"
    if os.environ.get(TRIAL_ENV, "") != "trial":
        return f"its kernels have not been checked on a GPU yet ({TRIAL_ENV}=trial tries them)"
    if op != "primitives":
        return "only the step primitives run on its kernels so far"
    if dtype != torch.float32:
        return f"its kernels are float32 only, not {dtype}"
    return None


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


@functools.lru_cache(maxsize=16)
def _stream(device_index, handle):
    cupy = _cupy()
    with cupy.cuda.Device(device_index):
        return cupy.cuda.ExternalStream(handle)


def launch(module_name, function, grid, block, device, *args):
    """Launch ``function`` of ``cuda/<module_name>.cu`` on torch's current stream of ``device``. A tensor argument
    is passed as its device pointer, None as a null pointer, a Python int as an ``int`` and a float as a
    ``float`` (the kernels' parameter types)."""
    import numpy as np
    import torch
    cupy = _cupy()
    values = tuple(a.data_ptr() if torch.is_tensor(a) else np.int32(a) if isinstance(a, int)
                   else np.float32(a) if isinstance(a, float) else a for a in args)
    with cupy.cuda.Device(device.index), _stream(device.index, torch.cuda.current_stream(device).cuda_stream):
        kernel(module_name, function)(grid, block, values)


# ---- primitives (see :mod:`onmt_structdrop.ops`) ------------------------------------------------------------
def _blocks(n):
    return (n + TILE - 1) // TILE


def _mult(mult, alpha, like):
    """``(per-unit multipliers or None, scalar)`` as the kernels take them."""
    import torch
    if torch.is_tensor(mult):
        return mult.to(device=like.device, dtype=like.dtype).contiguous(), float(alpha)
    return None, float(alpha * mult)


def _sizes(*values):
    return tuple(int(v) for v in values)


def _written_in_place(*tensors):
    return all(t is None or t.is_contiguous() for t in tensors)


def _torch():
    from . import torch_backend
    return torch_backend


def kept_rows(wt, keep):
    """``wt`` itself (contiguous): the products below read its kept rows through ``keep``."""
    return wt.contiguous()


def add_rows(dwt, keep, drows):
    return dwt.index_add_(0, keep, drows)


def kept_product(out, a, keep, mult, rows, alpha=1.0):
    """``out += alpha * (a[:, K] * mult) @ rows[K]`` (``rows``: the whole ``wt``)."""
    if not _written_in_place(out):
        return _torch().kept_product(out, a, keep, mult, rows.index_select(0, keep), alpha)
    k, (M, n), n_out = keep.shape[0], a.shape, rows.shape[1]
    if k and M:
        values, scale = _mult(mult, alpha, a)
        launch("compact_matmul", "gather_k_matmul", (_blocks(n_out), _blocks(M)), (TILE, TILE), a.device,
               a.contiguous(), rows, keep.contiguous(), values, out, *_sizes(M, n, n_out, k), scale, 1.0)
    return out


def kept_input_grad(da, dout, keep, mult, rows, alpha=1.0):
    """``da[:, K] = alpha * mult * (dout @ rows[K]^T)``; the dropped columns are zeroed."""
    if not _written_in_place(da):
        return _torch().kept_input_grad(da, dout, keep, mult, rows.index_select(0, keep), alpha)
    da.zero_()
    k, (M, n_out), n = keep.shape[0], dout.shape, da.shape[1]
    if k and M:
        values, scale = _mult(mult, alpha, dout)
        launch("compact_matmul", "scatter_k_matmul_t", (_blocks(k), _blocks(M)), (TILE, TILE), da.device,
               dout.contiguous(), rows, keep.contiguous(), values, da, *_sizes(M, n, n_out, k), scale)
    return da


def add_kept_rows_grad(dwt, a, dout, keep, mult, alpha=1.0):
    """``dwt[K] += alpha * (a[:, K] * mult)^T @ dout``; the other rows are not touched."""
    if not _written_in_place(dwt):
        return _torch().add_kept_rows_grad(dwt, a, dout, keep, mult, alpha)
    k, (M, n), n_out = keep.shape[0], a.shape, dout.shape[1]
    if k and M:
        values, scale = _mult(mult, alpha, a)
        launch("compact_matmul", "accumulate_k_weight", (_blocks(n_out), _blocks(k)), (TILE, TILE), a.device,
               a.contiguous(), dout.contiguous(), keep.contiguous(), values, dwt, *_sizes(M, n, n_out, k), scale)
    return dwt


def kept_rows_grad(a, dout, keep, mult, alpha=1.0):
    dwt = add_kept_rows_grad(a.new_zeros(a.shape[1], dout.shape[1]), a, dout, keep, mult, alpha)
    return dwt.index_select(0, keep)


def cell_forward(gates, c_prev, act=None, c=None, tanh_c=None, h=None):
    """As the torch backend's (gate order i, f, g, o), in one kernel; ``act`` may be ``gates``."""
    import torch
    if not _written_in_place(act, c, tanh_c, h):
        return _torch().cell_forward(gates, c_prev, act, c, tanh_c, h)
    act = gates.clone(memory_format=torch.contiguous_format) if act is None else (
        act if act is gates else act.copy_(gates))  # the kernel activates in place
    if not act.is_contiguous():
        return _torch().cell_forward(gates, c_prev, None, c, tanh_c, h)
    c, tanh_c, h = (torch.empty_like(c_prev, memory_format=torch.contiguous_format) if x is None else x
                    for x in (c, tanh_c, h))
    B, H = c_prev.shape
    if B and H:
        launch("lstm_pointwise", "lstm_pointwise_forward", ((B * H + CELL_BLOCK - 1) // CELL_BLOCK,), (CELL_BLOCK,),
               act.device, act, c_prev.contiguous(), c, tanh_c, h, *_sizes(B, H))
    return act, c, tanh_c, h


def cell_backward(act, c_prev, tanh_c, dh, dc, dgates=None):
    """As the torch backend's: returns ``dgates``; ``dc`` becomes the gradient of ``c_prev`` (in place)."""
    import torch
    if not _written_in_place(dc, dgates) or not act.is_contiguous():
        return _torch().cell_backward(act, c_prev, tanh_c, dh, dc, dgates)
    dgates = torch.empty_like(act) if dgates is None else dgates
    B, H = c_prev.shape
    if B and H:
        launch("lstm_pointwise", "lstm_pointwise_backward", ((B * H + CELL_BLOCK - 1) // CELL_BLOCK,),
               (CELL_BLOCK,), act.device, act, c_prev.contiguous(), tanh_c.contiguous(), dh.contiguous(), dc,
               dgates, dc, *_sizes(B, H))
    return dgates

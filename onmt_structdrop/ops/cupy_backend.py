"""The ``cupy`` backend: CUDA kernels from the ``.cu`` files of the top-level ``cuda/`` folder (shipped with
the package), compiled at run time by CuPy (``RawModule``, cached) and launched on torch's current stream, on
torch tensors without copies (their device pointers are the kernels' arguments).

What it serves on CUDA tensors: the seam's step primitives (kept products, the fused cell); sequence products
with a packed mask whose kept set changes with the step (all steps' input products at once); and whole layers
of padded sequences (the input products of all steps at once, then per step one recurrent kept product and one
cell launch; the backward likewise; both replayed from CUDA graphs, :mod:`.cuda_graphs`). Dense masks
(``compact=False``, ``bernoulli``) are multiplied in on the same graphed loops; packed sequences go to the
``torch`` backend.

The products take one of two routes (``ONMT_STRUCTDROP_CUPY_PRODUCTS``, read once, when the backend is first
imported; :data:`ROUTE`):
- ``cublas`` (the default): a step's kept product reads a gathered copy of the kept weight rows with cuBLAS, and
  the products of all steps run as one cuBLAS product of the masked inputs. Float32, bfloat16 and float16.
- ``kernels``: the ``compact_matmul.cu`` kernels read the kept rows in place. Float32 only. On an H200 they reach
  0.1-0.3 of the ideal (one output per thread, no tensor cores), below the gathered copy with cuBLAS; they stay
  as the starting point of a tuned gathered product.
``scripts/gpu_check.sh`` checks all of it on a GPU (figures in docs/benchmarks.md, "GPU headline").
``ONMT_STRUCTDROP_CUPY=off`` makes the backend decline everything. A missing CuPy or GPU is one log line (the
backend is then unavailable). CI compiles every source with nvcc (``tests/test_cuda_sources.py``) and runs this
module's code with the kernels computed in torch (``tests/cuda_emulator.py``).
"""
from __future__ import annotations

import functools
import os
import sys

import torch

from ..resources import data_path
from . import cuda_graphs, env_flag, torch_backend
from .packed import PackedMask

NAME = "cupy"
SWITCH_ENV = "ONMT_STRUCTDROP_CUPY"
ROUTE_ENV = "ONMT_STRUCTDROP_CUPY_PRODUCTS"
KERNELS = {
    "compact_matmul": ("gather_k_matmul", "gather_k_matmul_steps", "scatter_k_matmul_t", "scatter_k_matmul_t_steps",
                       "accumulate_k_weight"),
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
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    return True, ""


def route_from_environment():
    """The products' route that ``ONMT_STRUCTDROP_CUPY_PRODUCTS`` names (``cublas`` when unset)."""
    value = os.environ.get(ROUTE_ENV, "cublas").strip().lower() or "cublas"
    if value not in ROUTES:
        raise ValueError(f"{ROUTE_ENV}={os.environ[ROUTE_ENV]!r} is not a product route; use one of: "
                         f"{', '.join(ROUTES)}")
    return value


def compaction_pays(op, plan):
    """A layer's and a step's products: always. A whole sequence's product: no; the default (cublas) route
    multiplies the masks in and runs all steps as one product, as gathering a set per step costs more than it
    saves; its kernels route reads the kept rows in place at 0.1-0.3 of the ideal on an H200
    (docs/benchmarks.md, "Design decisions")."""
    return op not in ("sequence", "rows")


def settings():
    """The backend's environment variables, checked (see :func:`onmt_structdrop.ops.check_environment`)."""
    env_flag(SWITCH_ENV, True)
    route_from_environment()


def details():
    """What this backend computes with, for a benchmark's report: the products' route."""
    return f"products by {ROUTE.NAME}"


def declines(op, device, dtype, plan=None):
    if device.type != "cuda":
        return f"tensors on {device}"
    if not env_flag(SWITCH_ENV, True):
        return f"{SWITCH_ENV}={os.environ[SWITCH_ENV]}"
    if dtype not in ROUTE.DTYPES:
        return f"its {ROUTE.NAME} route computes in {', '.join(map(str, ROUTE.DTYPES))}, not {dtype}"
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return f"it computes in float32, bfloat16 and float16, not {dtype}"
    return plan_declines(op, plan)


def plan_declines(op, plan):
    """Why the kernels cannot compute ``op`` with ``plan``, whatever the device and dtype (None: they can)."""
    if op == "primitives":
        return None
    if op == "sequence":
        if not isinstance(plan, PackedMask):
            return "without a packed mask it is one torch product"
        how = torch_backend.layout(plan)
        if how in ("one gather per call", "slices of one permuted copy"):  # batch, pool: faster there on an H200
            return f"the torch backend's {how} runs these few kept sets faster"
        return None
    if plan is None:
        return None
    if plan.batch_sizes is not None:
        return "packed sequences run on the torch backend so far"
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
    if torch.is_tensor(mult):
        return mult.to(device=like.device, dtype=like.dtype).contiguous(), float(alpha)
    return None, float(alpha * mult)


def _sizes(*values):
    return tuple(int(v) for v in values)


def _written_in_place(*tensors):
    return all(t is None or t.is_contiguous() for t in tensors)


class _CublasRoute:
    """The ``cublas`` route: a step's kept product reads a gathered copy of the kept weight rows with cuBLAS (the
    torch backend's primitives; a step's forward and backward share the copy), and a sequence's products run as
    one cuBLAS product of the inputs with the masks multiplied in."""

    NAME = "cublas"
    DTYPES = (torch.float32, torch.bfloat16, torch.float16)
    kept_rows = staticmethod(torch_backend.kept_rows)
    kept_product = staticmethod(torch_backend.kept_product)
    kept_input_grad = staticmethod(torch_backend.kept_input_grad)
    add_kept_rows_grad = staticmethod(torch_backend.add_kept_rows_grad)
    kept_rows_grad = staticmethod(torch_backend.kept_rows_grad)

    @staticmethod
    def sequence_product(a, wt, mask, bias=None):
        return torch_backend.sequence_product(a, wt, mask.dense(a.dtype), bias)[0], ()

    @staticmethod
    def sequence_backward(a, wt, mask, dout, need_input_grad=True, saved=(), need_bias_grad=False):
        return torch_backend.sequence_backward(a, wt, mask.dense(dout.dtype), dout, need_input_grad, (),
                                               need_bias_grad)


class _KernelsRoute:
    """The ``kernels`` route: the ``compact_matmul.cu`` kernels read the kept rows of ``wt`` in place through
    ``keep`` (``rows`` is ``wt`` itself); float32. An output that is not contiguous takes the cublas route's
    gathered copy."""

    NAME = "kernels"
    DTYPES = (torch.float32,)

    @staticmethod
    def kept_rows(wt, keep):
        return wt.contiguous()

    @staticmethod
    def kept_product(out, a, keep, mult, rows, alpha=1.0):
        if not _written_in_place(out):
            return torch_backend.kept_product(out, a, keep, mult, rows.index_select(0, keep), alpha)
        k, (M, n), n_out = keep.shape[0], a.shape, rows.shape[1]
        if k and M:
            values, scale = _mult(mult, alpha, a)
            launch("compact_matmul", "gather_k_matmul", (_blocks(n_out), _blocks(M)), (TILE, TILE), a.device,
                   a.contiguous(), rows, keep.contiguous(), values, out, *_sizes(M, n, n_out, k), scale, 1.0)
        return out

    @staticmethod
    def kept_input_grad(da, dout, keep, mult, rows, alpha=1.0):
        if not _written_in_place(da):
            return torch_backend.kept_input_grad(da, dout, keep, mult, rows.index_select(0, keep), alpha)
        da.zero_()
        k, (M, n_out), n = keep.shape[0], dout.shape, da.shape[1]
        if k and M:
            values, scale = _mult(mult, alpha, dout)
            launch("compact_matmul", "scatter_k_matmul_t", (_blocks(k), _blocks(M)), (TILE, TILE), da.device,
                   dout.contiguous(), rows, keep.contiguous(), values, da, *_sizes(M, n, n_out, k), scale)
        return da

    @staticmethod
    def add_kept_rows_grad(dwt, a, dout, keep, mult, alpha=1.0):
        if not _written_in_place(dwt):
            return torch_backend.add_kept_rows_grad(dwt, a, dout, keep, mult, alpha)
        k, (M, n), n_out = keep.shape[0], a.shape, dout.shape[1]
        if k and M:
            values, scale = _mult(mult, alpha, a)
            launch("compact_matmul", "accumulate_k_weight", (_blocks(n_out), _blocks(k)), (TILE, TILE), a.device,
                   a.contiguous(), dout.contiguous(), keep.contiguous(), values, dwt, *_sizes(M, n, n_out, k),
                   scale)
        return dwt

    @staticmethod
    def kept_rows_grad(a, dout, keep, mult, alpha=1.0):
        dwt = _KernelsRoute.add_kept_rows_grad(a.new_zeros(a.shape[1], dout.shape[1]), a, dout, keep, mult, alpha)
        return dwt.index_select(0, keep)

    @staticmethod
    def sequence_product(a, wt, mask, bias=None):
        T, B, _ = a.shape
        wt = wt.contiguous()
        return _steps_product(a.new_empty(T, B, wt.shape[1]), a, wt, mask, bias), ()

    @staticmethod
    def sequence_backward(a, wt, mask, dout, need_input_grad=True, saved=(), need_bias_grad=False):
        wt, dout = wt.contiguous(), dout.contiguous()
        da = _steps_input_grad(dout, wt, mask, a.shape[2]) if need_input_grad else None
        dwt = _steps_weight_grad(a.new_zeros(wt.shape), a.contiguous(), dout, mask)
        return da, dwt, torch_backend.bias_grad(dout, need_bias_grad)


ROUTES = {route.NAME: route for route in (_CublasRoute, _KernelsRoute)}
ROUTE = ROUTES[route_from_environment()]  # chosen once, when the backend is first imported


def kept_rows(wt, keep):
    """What the products below read as ``rows`` (see the route)."""
    return ROUTE.kept_rows(wt, keep)


def add_rows(dwt, keep, drows):
    return dwt.index_add_(0, keep, drows)


def kept_product(out, a, keep, mult, rows, alpha=1.0):
    """``out += alpha * (a[:, K] * mult) @ wt[K]`` (``rows``: from :func:`kept_rows`)."""
    return ROUTE.kept_product(out, a, keep, mult, rows, alpha)


def kept_input_grad(da, dout, keep, mult, rows, alpha=1.0):
    """``da[:, K] = alpha * mult * (dout @ wt[K]^T)``; the dropped columns are zeroed."""
    return ROUTE.kept_input_grad(da, dout, keep, mult, rows, alpha)


def add_kept_rows_grad(dwt, a, dout, keep, mult, alpha=1.0):
    """``dwt[K] += alpha * (a[:, K] * mult)^T @ dout``; the other rows are not touched."""
    return ROUTE.add_kept_rows_grad(dwt, a, dout, keep, mult, alpha)


def kept_rows_grad(a, dout, keep, mult, alpha=1.0):
    return ROUTE.kept_rows_grad(a, dout, keep, mult, alpha)


def cell_forward(gates, c_prev, act=None, c=None, tanh_c=None, h=None):
    """As the torch backend's (gate order i, f, g, o), in one kernel; ``act`` may be ``gates``."""
    if gates.dtype != torch.float32 or not _written_in_place(act, c, tanh_c, h):
        return torch_backend.cell_forward(gates, c_prev, act, c, tanh_c, h)
    act = gates.clone(memory_format=torch.contiguous_format) if act is None else (
        act if act is gates else act.copy_(gates))  # the kernel activates in place
    if not act.is_contiguous():
        return torch_backend.cell_forward(gates, c_prev, None, c, tanh_c, h)
    c, tanh_c, h = (torch.empty_like(c_prev, memory_format=torch.contiguous_format) if x is None else x
                    for x in (c, tanh_c, h))
    B, H = c_prev.shape
    if B and H:
        launch("lstm_pointwise", "lstm_pointwise_forward", ((B * H + CELL_BLOCK - 1) // CELL_BLOCK,), (CELL_BLOCK,),
               act.device, act, c_prev.contiguous(), c, tanh_c, h, *_sizes(B, H))
    return act, c, tanh_c, h


def cell_backward(act, c_prev, tanh_c, dh, dc, dgates=None):
    """As the torch backend's: returns ``dgates``; ``dc`` becomes the gradient of ``c_prev`` (in place)."""
    if act.dtype != torch.float32 or not _written_in_place(dc, dgates) or not act.is_contiguous():
        return torch_backend.cell_backward(act, c_prev, tanh_c, dh, dc, dgates)
    dgates = torch.empty_like(act) if dgates is None else dgates
    B, H = c_prev.shape
    if B and H:
        launch("lstm_pointwise", "lstm_pointwise_backward", ((B * H + CELL_BLOCK - 1) // CELL_BLOCK,),
               (CELL_BLOCK,), act.device, act, c_prev.contiguous(), tanh_c.contiguous(), dh.contiguous(), dc,
               dgates, dc, *_sizes(B, H))
    return dgates


# ---- sequences and the layer ---------------------------------------------------------------------------------
def per_step(mask):
    """``(keep, mult)`` of every step at the mask's full width: ``keep[t]`` the kept units of step ``t`` (padding
    units carry multiplier 0), ``mult`` ``[T, k]`` or the float scale. Gathered on the device through
    ``step_set``, so that a captured graph serves any grouping of steps into sets and any set sizes."""
    keep = mask.keep.index_select(0, mask.step_set)
    return keep, mask.scale if mask.values is None else mask.values.index_select(0, mask.step_set)


def _step(kept, t):
    keep, mult = kept
    return keep[t], mult if isinstance(mult, float) else mult[t]


def _steps_product(out, a, wt, mask, bias):
    """``out[t] = mask_t(a[t]) @ wt + bias`` for every step at once (``out`` ``[T, B, n_out]``)."""
    T, B, n = a.shape
    n_out = wt.shape[1]
    if T and B:
        launch("compact_matmul", "gather_k_matmul_steps", (_blocks(n_out), _blocks(B), T), (TILE, TILE), a.device,
               a.contiguous(), wt, mask.keep, mask.values, mask.step_set, bias, out, *_sizes(B, n, n_out, mask.width),
               float(mask.scale))
    return out


def _steps_input_grad(dout, wt, mask, n):
    """``da[t] = mask_t(dout[t] @ wt^T)`` for every step at once; the dropped columns are zero."""
    T, B, n_out = dout.shape
    da = dout.new_zeros(T, B, n)
    if T and B and mask.width:
        launch("compact_matmul", "scatter_k_matmul_t_steps", (_blocks(mask.width), _blocks(B), T), (TILE, TILE),
               dout.device, dout.contiguous(), wt, mask.keep, mask.values, mask.step_set, da,
               *_sizes(B, n, n_out, mask.width), float(mask.scale))
    return da


def _steps_weight_grad(dwt, a, dout, mask):
    """``dwt[K_t] += (a[t][:, K_t] * mult_t)^T @ dout[t]`` for every step (one launch per step: kept sets that
    overlap add into the same rows)."""
    kept = per_step(mask)
    for t in range(a.shape[0]):
        add_kept_rows_grad(dwt, a[t], dout[t], *_step(kept, t))
    return dwt


def sequence_product(a, wt, mask, bias=None):
    """See :mod:`onmt_structdrop.ops` (a packed mask; ``saved`` is empty: the backward reads ``a`` again)."""
    return ROUTE.sequence_product(a, wt, mask, bias)


def sequence_backward(a, wt, mask, dout, need_input_grad=True, saved=(), need_bias_grad=False):
    """See :mod:`onmt_structdrop.ops`."""
    return ROUTE.sequence_backward(a, wt, mask, dout, need_input_grad, saved, need_bias_grad)


def _products(a, wt, mask, bias):
    """``out[t] = mask_t(a[t]) @ wt + bias``: this backend's for a packed mask, one torch product for a dense mask
    (multiplied in) or none."""
    if not isinstance(mask, PackedMask):
        return torch_backend.sequence_product(a, wt, mask, bias)[0]
    return sequence_product(a, wt, mask, bias)[0]


def _product_grads(a, wt, mask, dout, need_input_grad):
    """The gradients of :func:`_products` as ``(da or None, dwt)``."""
    if not isinstance(mask, PackedMask):
        return torch_backend.sequence_backward(a, wt, mask, dout, need_input_grad)[:2]
    return sequence_backward(a, wt, mask, dout, need_input_grad)[:2]


def _order(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def _recurrent(wt, mask):
    """The shared :class:`~.torch_backend.Recurrent` on this backend's primitives: step ``t``'s kept units gathered
    on the device (:func:`per_step`), so that a captured graph serves any draw; one kept set for every step
    (``batch``) has its rows prepared once per call."""
    if not isinstance(mask, PackedMask):
        return torch_backend.Recurrent(wt, mask, primitives=sys.modules[__name__])
    steps = per_step(mask)
    once = kept_rows(wt, mask.keep[0]) if mask.num_sets == 1 else None

    def kept(t):
        keep, mult = _step(steps, t)
        return keep, mult, once if once is not None else kept_rows(wt, keep)

    return torch_backend.Recurrent(wt, mask, kept, primitives=sys.modules[__name__])


GRAPHS = cuda_graphs.GraphCache()  # the layer loops' CUDA graphs (see cuda_graphs)


def lstm_layer_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, plan):
    """See :mod:`onmt_structdrop.ops` (padded sequences; packed, dense or no masks): ``(y, h_n, c_n, saved)``; replayed
    from a CUDA graph unless ``ONMT_STRUCTDROP_CUDA_GRAPHS=0``."""
    if cuda_graphs.uses_graphs(plan):
        return cuda_graphs.graphed_layer_forward(GRAPHS, _layer_forward, x, h0, c0, w_ih, w_hh, b_ih, b_hh, plan)
    return _layer_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, plan)


def lstm_layer_backward(plan, x, h0, c0, w_ih, w_hh, saved, dy, dh_n, dc_n, needs):
    """See :mod:`onmt_structdrop.ops`: ``(dx, dh0, dc0, dw_ih, dw_hh, db)``; from a CUDA graph like the forward."""
    if cuda_graphs.uses_graphs(plan):
        return cuda_graphs.graphed_layer_backward(GRAPHS, _layer_backward, plan, x, h0, c0, w_ih, w_hh, saved, dy,
                                                  dh_n, dc_n, needs)
    return _layer_backward(plan, x, h0, c0, w_ih, w_hh, saved, dy, dh_n, dc_n, needs)


def _layer_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, plan):
    T, B, _ = x.shape
    H = w_hh.shape[1]
    wih_t, whh_t = w_ih.t().contiguous(), w_hh.t().contiguous()  # the kernels read W^T's kept rows in place
    bias = None if b_ih is None else (b_ih + b_hh).contiguous()
    x = x.contiguous()
    gates = _products(x, wih_t, plan.input_mask, bias)  # contiguous [T, B, 4H]: the steps work in place on it
    y, cells, tanh_cells = (x.new_empty(T, B, H) for _ in range(3))
    h, c = h0.contiguous(), c0.contiguous()
    recurrent = _recurrent(whh_t, plan.recurrent_mask)
    for t in _order(T, plan.reverse):
        G = gates[t]
        recurrent.product(G, h, t)
        cell_forward(G, c, act=G, c=cells[t], tanh_c=tanh_cells[t], h=y[t])  # activated in place
        h, c = y[t], cells[t]
    return y, h.clone(), c.clone(), (gates, y, cells, tanh_cells, wih_t, whh_t)


def _layer_backward(plan, x, h0, c0, w_ih, w_hh, saved, dy, dh_n, dc_n, needs):
    act, y, cells, tanh_cells, wih_t, whh_t = saved
    T, B, _ = x.shape
    H = y.shape[2]
    first, step = (T - 1, 1) if plan.reverse else (0, -1)  # the step that starts from h0, c0; where t's prev is
    h_prev = [h0 if t == first else y[t + step] for t in range(T)]
    c_prev = [c0 if t == first else cells[t + step] for t in range(T)]
    dh = dh_n.clone() if dh_n is not None else x.new_zeros(B, H)
    dc = dc_n.clone() if dc_n is not None else x.new_zeros(B, H)
    dgates = x.new_empty(T, B, 4 * H)
    recurrent = _recurrent(whh_t, plan.recurrent_mask)
    for t in _order(T, not plan.reverse):
        if dy is not None:
            dh.add_(dy[t])
        cell_backward(act[t], c_prev[t], tanh_cells[t], dh, dc, dgates=dgates[t])
        dh = recurrent.input_grad(dh, dgates[t], t)

    need_x, need_h0, need_c0, need_bias = needs
    dx, dwih_t = _product_grads(x.contiguous(), wih_t, plan.input_mask, dgates, need_x)
    _, dwhh_t = _product_grads(torch.stack(h_prev), whh_t, plan.recurrent_mask, dgates, False)
    db = dgates.sum(dim=(0, 1)) if need_bias else None
    return dx, dh if need_h0 else None, dc if need_c0 else None, dwih_t.t(), dwhh_t.t(), db

"""The ``native`` backend: the seam's operations in C++ on the CPU (the extension ``onmt_structdrop._native``,
built from ``onmt_structdrop/csrc`` by the package's set-up).

The time loops of a layer run in C++ with no Python per step; the products read the kept rows of a weight in
place through the index list (AVX-512, AVX2+FMA or portable kernels, chosen at run time; ``ONMT_STRUCTDROP_ISA``
asks for a lesser one), except a step product of 128 rows or more, which copies the kept rows once and runs as an
MKL product (the copy is then a small share, and MKL's blocking for large products beats the kernels); the
cell's pointwise forward and backward are one pass per step, fused with the recurrent product of the same gate
columns. It serves the primitives (the step loops of the input-feed decoder)
in float32 and float64 on the CPU, and the layer and the masked products of a whole sequence (the output layer)
in float32 and float64 on the CPU with packed masks, when one of them has a fresh kept set for every step or
for many steps, and sets of about the same size (``time``, explicit masks); masks with a few sets shared by the
steps (``batch``, ``pool``) or none are faster in the torch backend's sequence-wide products, regularly strided
sets (``rbd``) in its strided views, sets of uneven sizes (``tbd``) in its gathers, and dense masks take its
masked-dense path.
"""
from __future__ import annotations

import functools
import importlib

import torch

from . import CACHED_SETS
from .packed import PackedMask

NAME = "native"
SERVES = ("primitives", "lstm_layer", "sequence")
MIN_SETS = CACHED_SETS + 1  # a plan needs a mask with this many kept sets for the native layer to serve it
ONLY_WHERE_FASTER = True  # decline the plans the torch backend runs faster (the tests turn it off)


@functools.lru_cache(maxsize=None)
def extension():
    """The compiled module, or None and why not."""
    try:
        return importlib.import_module("onmt_structdrop._native"), ""
    except ImportError as err:
        return None, (f"the C++ extension onmt_structdrop._native is not built ({err}); reinstall the package with "
                      "torch and a C++ compiler present (`make setup`, or `pip install --no-build-isolation .`)")


def available():
    ext, reason = extension()
    return ext is not None, reason


def details():
    """What this backend computes with, for a benchmark's report: the kernels' instruction set."""
    try:
        return f"kernels {extension()[0].isa()}"
    except RuntimeError as err:  # ONMT_STRUCTDROP_ISA names kernels this CPU cannot run
        return f"unusable: {err}"


def declines(op, device, dtype, plan=None):
    """Why this backend cannot serve ``op`` on ``device``/``dtype`` with ``plan`` (None: it can)."""
    if op not in SERVES:
        return f"the native engine does not implement {op}"
    if torch.device(device).type != "cpu":
        return "the native engine runs on the CPU"
    if dtype not in (torch.float32, torch.float64):
        return f"the native engine computes in float32 and float64, not {dtype}"
    if op == "primitives":
        return None
    if op == "sequence":  # the plan is the mask itself
        masks = (plan,)
    elif plan is None:
        return None
    else:
        masks = (plan.input_mask, plan.recurrent_mask)
    if any(m is not None and not isinstance(m, PackedMask) for m in masks):
        return "dense masks take the torch backend's masked-dense path"
    return _faster_elsewhere(masks) if ONLY_WHERE_FASTER else None


def compaction_pays(op, plan):
    """Always, where this engine serves (it declines the plans the torch backend runs faster,
    :func:`_faster_elsewhere`): its products read the kept rows in place, so a fresh set per step costs no gather
    (the output layer of PTB and CoNLL compacted: level with the dense product at p = 0.3, 1.2x faster at p = 0.5;
    docs/benchmarks.md, "Design decisions")."""
    return True


def _faster_elsewhere(masks):
    """Why the torch backend runs plans with these masks faster (None: it does not)."""
    masks = [m for m in masks if m is not None]
    if any(m.strides is not None for m in masks):
        return "regularly strided kept sets (rbd): the torch backend reads them in place as strided views"
    if any(m.width > 1.1 * sum(m.sizes) / max(1, m.num_sets) for m in masks):
        return "kept sets of uneven sizes (tbd): the native kernels would multiply the padding of the narrower ones"
    if not any(m.num_sets >= MIN_SETS or m.num_sets == m.steps for m in masks):
        # every step shares one of a few kept sets (or nothing is dropped): the torch backend runs each set's
        # products as one sequence-wide product, which is faster than the native per-step loop. A fresh set per
        # step stays here however short the sequence: the torch backend would gather the kept weight rows of
        # every step (at 3-8 steps a 2x200 layer ran 1.5-2x and a 200 -> 10000 output layer 3-4x slower there)
        return (f"no mask with {MIN_SETS} kept sets or more, nor one with a set of its own for every step: the "
                "torch backend's sequence-wide products serve it")
    return None


def _mask(mask, n, steps):
    """A mask as the extension takes it: ``(keep [G, k], values or None, scale, set of each step)``; no mask is
    one set keeping every unit."""
    if mask is None:
        return torch.arange(n).view(1, n), None, 1.0, [0] * steps
    return mask.keep, mask.values, mask.scale, list(mask.step_sets)


# ---- primitives (see :mod:`onmt_structdrop.ops`): the products read the kept rows of ``wt`` in place ----------
def _mult(mult, alpha):
    """The multipliers as the extension takes them: ``(values or None, scale)``."""
    return (mult * alpha, 1.0) if torch.is_tensor(mult) else (None, mult * alpha)


def kept_rows(wt, keep):
    """``wt`` itself (contiguous): the products below read its kept rows through ``keep``."""
    return wt.contiguous()


def kept_product(out, a, keep, mult, rows, alpha=1.0):
    extension()[0].kept_step_product(a.contiguous(), keep, *_mult(mult, alpha), rows, out)
    return out


def kept_input_grad(da, dout, keep, mult, rows, alpha=1.0):
    extension()[0].kept_step_input_grad(dout.contiguous(), keep, *_mult(mult, alpha), rows, da)
    return da


def add_kept_rows_grad(dwt, a, dout, keep, mult, alpha=1.0):
    extension()[0].kept_step_weight_grad(a.contiguous(), keep, *_mult(mult, alpha), dout.contiguous(), dwt)
    return dwt


def kept_rows_grad(a, dout, keep, mult, alpha=1.0):
    # (the step loops use add_kept_rows_grad, which writes into the kept rows in place; this form is the contract's)
    dwt = add_kept_rows_grad(a.new_zeros(a.shape[1], dout.shape[1]), a, dout, keep, mult, alpha)
    return dwt.index_select(0, keep)


def add_rows(dwt, keep, drows):
    return dwt.index_add_(0, keep, drows)


def cell_forward(gates, c_prev, act=None, c=None, tanh_c=None, h=None):
    gates, c_prev = gates.contiguous(), c_prev.contiguous()
    act = torch.empty_like(gates) if act is None else act
    c, tanh_c, h = (torch.empty_like(c_prev) if x is None else x for x in (c, tanh_c, h))
    extension()[0].cell_forward(gates, c_prev, act, c, tanh_c, h)
    return act, c, tanh_c, h


def cell_backward(act, c_prev, tanh_c, dh, dc, dgates=None):
    dgates = torch.empty_like(act) if dgates is None else dgates
    extension()[0].cell_backward(act, c_prev, tanh_c, dh.contiguous(), dc, dgates)
    return dgates


# ---- sequences and the layer ---------------------------------------------------------------------------------
def sequence_product(a, wt, mask, bias=None):
    """See :mod:`onmt_structdrop.ops` (``saved``: the gathered kept inputs of every step)."""
    out, gathered = extension()[0].sequence_product(a, wt, _mask(mask, a.shape[2], a.shape[0]), bias)
    return out, (gathered,)


def sequence_backward(a, wt, mask, dout, need_input_grad=True, saved=(), need_bias_grad=False):
    """See :mod:`onmt_structdrop.ops` (the bias's gradient is summed in the same sweep over ``dout``)."""
    mask_args = _mask(mask, a.shape[2], a.shape[0])
    gathered = saved[0] if saved else extension()[0].gathered(a, mask_args)
    da, dwt, db = extension()[0].sequence_backward(gathered, wt, mask_args, dout, a.shape[2], need_input_grad,
                                                   need_bias_grad)
    return (da if need_input_grad else None), dwt, (db if need_bias_grad else None)


def lstm_layer_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, plan):
    """See :mod:`onmt_structdrop.ops`."""
    T, _, n = x.shape
    bias = None if b_ih is None else b_ih + b_hh
    y, h_n, c_n, *saved = extension()[0].lstm_layer_forward(
        x, h0, c0, w_ih, w_hh, bias, _mask(plan.input_mask, n, T), _mask(plan.recurrent_mask, w_hh.shape[1], T),
        list(plan.batch_sizes or ()), plan.reverse)
    return y, h_n, c_n, tuple(saved)


def lstm_layer_backward(plan, x, h0, c0, w_ih, w_hh, saved, dy, dh_n, dc_n, needs):
    """See :mod:`onmt_structdrop.ops`."""
    T, _, n = x.shape
    H = w_hh.shape[1]
    need_x, need_h0, need_c0, need_bias = needs
    dx, dh0, dc0, dw_ih, dw_hh, db = extension()[0].lstm_layer_backward(
        list(saved), _mask(plan.input_mask, n, T), _mask(plan.recurrent_mask, H, T), list(plan.batch_sizes or ()),
        plan.reverse, n, H, dy, dh_n, dc_n, need_x)
    return (dx if need_x else None, dh0 if need_h0 else None, dc0 if need_c0 else None, dw_ih, dw_hh,
            db if need_bias else None)

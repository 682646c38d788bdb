"""Autograd functions of structured dropout: each hands its tensors to the backend that
:func:`onmt_structdrop.ops.choose` picked for the call and returns what it computes; none does arithmetic of its
own.

``LSTMLayerFunction`` runs one LSTM layer and direction; ``SequenceLinearFunction`` a masked linear map of a
whole sequence; for code that runs step by step under autograd (the input-feed decoder), :class:`StepProduct`
gives one step's product on the kept units (its steps' weight gradients summed in one buffer per call), and
``LSTMCellFunction`` the cell's pointwise work.
"""
from __future__ import annotations

import functools

import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from . import ops
from .accounting import tally
from .ops import CACHED_SETS, PackedMask


def first_order(backward):
    """``once_differentiable``, and an error as soon as a second-order graph is asked for: the backends compute
    first-order gradients only, and a gradient without a graph would make a penalty on it contribute nothing."""
    inner = once_differentiable(backward)

    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if torch.is_grad_enabled():  # backward(create_graph=True) / autograd.grad(create_graph=True)
            raise RuntimeError("structured dropout has first-order gradients only: create_graph=True (double "
                               "backward, e.g. a gradient penalty) through a training forward with dropout is "
                               "not supported; compute the penalty in eval() or with dropout 0")
        return inner(ctx, *grads)

    return wrapper


class LSTMLayerFunction(torch.autograd.Function):
    """``(x, h0, c0, w_ih, w_hh, b_ih, b_hh, choice) -> (y, h_n, c_n)``; ``x`` is ``[T, B, n]``, ``choice`` the
    seam's :class:`~onmt_structdrop.ops.Choice` for the layer (its backend and :class:`~onmt_structdrop.ops.LayerPlan`)."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, choice: ops.Choice):
        y, h_n, c_n, saved = choice.backend.lstm_layer_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, choice.plan)
        ctx.choice, ctx.has_bias = choice, b_ih is not None
        ctx.save_for_backward(x, h0, c0, w_ih, w_hh, *saved)
        return y, h_n, c_n

    @staticmethod
    @first_order
    def backward(ctx, dy, dh_n, dc_n):
        x, h0, c0, w_ih, w_hh, *saved = ctx.saved_tensors
        needs = (*ctx.needs_input_grad[:3], ctx.has_bias)
        dx, dh0, dc0, dw_ih, dw_hh, db = ctx.choice.backend.lstm_layer_backward(
            ctx.choice.plan, x, h0, c0, w_ih, w_hh, tuple(saved), dy, dh_n, dc_n, needs)
        return dx, dh0, dc0, dw_ih, dw_hh, db, db, None


class SequenceLinearFunction(torch.autograd.Function):
    """``y[t] = mask_t(x[t]) @ W^T + b`` for ``x`` ``[T, B, n]``; ``choice``: the seam's
    :class:`~onmt_structdrop.ops.Choice` for the ``sequence`` product (its backend and the mask's form)."""

    @staticmethod
    def forward(ctx, x, weight, bias, choice: ops.Choice):
        out, saved = choice.backend.sequence_product(x, weight.t(), choice.plan, bias)
        ctx.choice, ctx.has_bias = choice, bias is not None
        ctx.save_for_backward(x, weight, *saved)
        return out

    @staticmethod
    @first_order
    def backward(ctx, dout):
        x, weight, *saved = ctx.saved_tensors
        dx, dwt, db = ctx.choice.backend.sequence_backward(
            x, weight.t(), ctx.choice.plan, dout, ctx.needs_input_grad[0], tuple(saved),
            ctx.has_bias and ctx.needs_input_grad[2])
        return dx, dwt.t(), db, None


def sequence_linear(x, weight, bias, mask):
    """``F.linear`` of ``x`` ``[T, B, n]`` with ``mask`` applied per step (a packed mask compacted where the seam
    finds that it pays, :func:`onmt_structdrop.ops.choose`)."""
    if mask is None:
        if tally.active:
            tally.product(x.shape[0] * x.shape[1], x.shape[2], weight.shape[0])
            tally.backend(ops.plain().NAME)
        return F.linear(x, weight, bias)
    choice = ops.choose("sequence", x, mask)
    if tally.active:
        T, B, n = x.shape
        tally.product(T * B, n, weight.shape[0], choice.plan, T)
        tally.backend(choice.name)
    return SequenceLinearFunction.apply(x.contiguous(), weight, bias, choice)


class _StepWeightGrad:
    """The weight gradient (``W^T`` layout) of one call's step products: every step's backward adds its kept
    rows into one buffer, and :class:`_CollectFunction` hands the sum to autograd once (a gradient per step would
    be a dense ``n x n_out`` tensor per step, zero-filled, scattered into and summed by autograd)."""

    def __init__(self, shape):
        self.shape, self.buffer = shape, None

    def add(self, backend, a, dout, keep, mult):
        if self.buffer is None:
            self.buffer = dout.new_zeros(self.shape)
        backend.add_kept_rows_grad(self.buffer, a, dout, keep, mult)

    def take(self):
        buffer, self.buffer = self.buffer, None
        return buffer


class _CollectFunction(torch.autograd.Function):
    """``weight -> anchor`` (an empty tensor every step product of the call takes as an input): autograd runs
    this node's backward after every step's, so it returns the weight gradient they accumulated."""

    @staticmethod
    def forward(ctx, weight, grad: _StepWeightGrad):
        ctx.grad = grad
        return weight.new_empty(0)

    @staticmethod
    @first_order
    def backward(ctx, _):
        dwt = ctx.grad.take()
        return (dwt.t() if dwt is not None else None), None


class _KeptStepFunction(torch.autograd.Function):
    """``(x[:, K] * mult) @ rows`` of one step (``rows = wt[K]``, no gradient of its own): ``x``'s gradient is
    zero off ``K``, the weight's goes to the call's :class:`_StepWeightGrad` through ``anchor``."""

    @staticmethod
    def forward(ctx, x, anchor, rows, keep, mult, grad, backend):
        out = backend.kept_product(x.new_zeros(x.shape[0], rows.shape[1]), x, keep, mult, rows)
        ctx.backend, ctx.grad, ctx.mult = backend, grad, None if torch.is_tensor(mult) else mult
        ctx.save_for_backward(x, rows, keep, mult if torch.is_tensor(mult) else None)
        return out

    @staticmethod
    @first_order
    def backward(ctx, dout):
        x, rows, keep, mult = ctx.saved_tensors
        mult = mult if mult is not None else ctx.mult
        backend = ctx.backend
        dx = backend.kept_input_grad(torch.empty_like(x), dout, keep, mult, rows) if ctx.needs_input_grad[0] \
            else None
        if ctx.needs_input_grad[1]:
            ctx.grad.add(backend, x, dout, keep, mult)
        return dx, dout.new_empty(0), None, None, None, None, None


class StepProduct:
    """``mask_t(x_t) @ weight^T`` for the steps ``t`` of one forward call of a step-by-step loop.

    With a :class:`~onmt_structdrop.ops.PackedMask` only the kept columns of ``x_t`` and the kept rows of
    ``weight^T`` are read (from one transposed copy per call: prepared once per set when the mask has few sets,
    else at each step, or read in place by a backend whose products do so); the steps' weight gradients add up
    in one buffer per call.
    ``scaled=True`` says that ``x_t`` already carries the mask, so only its kept columns are read and its
    multipliers are not applied again.
    """

    def __init__(self, weight, mask, scaled=False):
        self.weight, self.scaled = weight, scaled
        self.mask = mask.unscaled() if scaled and isinstance(mask, PackedMask) else mask
        self._rows = {}
        if isinstance(mask, PackedMask):
            self._backend = ops.choose("primitives", weight, mask).backend
            self._cached = mask.num_sets <= CACHED_SETS
            self._wt = weight.detach().t().contiguous()  # one copy per call, read by every step
            self._grad = _StepWeightGrad(self._wt.shape)
            self._anchor = _CollectFunction.apply(weight, self._grad)

    def __call__(self, x, t):
        mask = self.mask
        if tally.active:
            packed = isinstance(mask, PackedMask)
            tally.product(x.shape[0], x.shape[1], self.weight.shape[0],
                          fraction=mask.sizes[mask.step_sets[t]] / x.shape[1] if packed else 1.0)
            tally.backend((self._backend if packed else ops.plain()).NAME)
        if mask is None or (self.scaled and not isinstance(mask, PackedMask)):
            return F.linear(x, self.weight)
        if not isinstance(mask, PackedMask):  # the masked-dense path
            m = mask[t]
            return F.linear(x * (m if m.dim() == 1 else m[: x.shape[0]]), self.weight)
        g = mask.step_sets[t]
        keep, mult = mask.kept(g)
        rows = self._rows.get(g)
        if rows is None:
            rows = self._backend.kept_rows(self._wt, keep)
            if self._cached:
                self._rows[g] = rows
        return _KeptStepFunction.apply(x, self._anchor, rows, keep, mult, self._grad, self._backend)


class LSTMCellFunction(torch.autograd.Function):
    """``(gates, c_prev) -> (h, c)``: one LSTM step's pointwise work as one autograd node (a step-by-step loop
    would otherwise spend much of its time building and walking the graph of a dozen small ops)."""

    @staticmethod
    def forward(ctx, gates, c_prev):
        backend = ops.choose("primitives", gates).backend
        act, c, tanh_c, h = backend.cell_forward(gates, c_prev)
        ctx.backend = backend
        ctx.save_for_backward(act, c_prev, tanh_c)
        return h, c

    @staticmethod
    @first_order
    def backward(ctx, dh, dc):
        act, c_prev, tanh_c = ctx.saved_tensors
        dh = dh if dh is not None else torch.zeros_like(c_prev)
        dc = dc.clone() if dc is not None else torch.zeros_like(c_prev)
        dgates = ctx.backend.cell_backward(act, c_prev, tanh_c, dh, dc)
        return dgates, dc


def lstm_cell(gates, c_prev):
    """One LSTM step from its pre-activation gates: ``(h, c)``; the cell state is never dropped."""
    return LSTMCellFunction.apply(gates, c_prev)

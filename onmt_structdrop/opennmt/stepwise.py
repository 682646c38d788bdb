"""Compacted products for code that runs step by step under autograd (the input-feed decoder, the generator).

``masked_linear`` applies a whole sequence's mask at once; ``StepProduct`` one step at a time. With a
:class:`~onmt_structdrop.masks.StructuredMask` only the kept columns of the input and of the weight are read:
the weight's kept columns are gathered once per kept set and call (with many sets, at every step, as whole rows
of one transposed copy per call), and the backward is compacted too (input gradient on kept columns only, weight
gradient accumulated into kept columns only). ``scaled=True`` says that the input already carries the mask (its dropped
columns are zero and its kept ones scaled), so the mask's values are not applied again.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

from ..compact import CACHED_GROUPS
from ..masks import StructuredMask


def _multiplier(mask, g):
    return mask.values[g] if mask.values is not None else mask.scale


def _row_multiplier(mask, g):
    """The multipliers of group ``g``'s kept units for ``k x ...`` operands (one per row)."""
    return mask.values[g].unsqueeze(1) if mask.values is not None else mask.scale


def apply_mask(x, mask):
    """``x`` ``[B, T, n]`` times a ``[T, n]`` or ``[T, B, n]`` dense mask, or a StructuredMask."""
    if mask is None:
        return x
    if isinstance(mask, StructuredMask):
        mask = mask.dense(x.dtype).to(x.device)
    return x * (mask.unsqueeze(0) if mask.dim() == 2 else mask.transpose(0, 1))


class _StepwiseLinear(torch.autograd.Function):
    """``y[:, t] = x[:, t, K_t] @ W[:, K_t]^T + b`` for ``x`` ``[B, T, n]``, one product per step written in place
    into the batch-major output (a strided BLAS operand), so the output is never reordered: for a large output
    (a generator's vocabulary) a reordering copy costs as much as the skipped work."""

    @staticmethod
    def forward(ctx, x, weight, bias, mask, scaled):
        B, T, _ = x.shape
        rows = _kept_rows(weight, mask, scaled)
        out = x.new_empty(B, T, weight.shape[0])
        for t in range(T):
            g = mask.step_group[t]
            xk = x[:, t].index_select(1, mask.keep[g])
            if bias is not None:
                torch.addmm(bias, xk, rows[g], out=out[:, t])
            else:
                torch.mm(xk, rows[g], out=out[:, t])
        ctx.mask, ctx.scaled, ctx.has_bias = mask, scaled, bias is not None
        ctx.save_for_backward(x, weight)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        x, weight = ctx.saved_tensors
        mask = ctx.mask
        rows = _kept_rows(weight, mask, ctx.scaled)
        dx = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        dwt = weight.new_zeros(weight.shape[1], weight.shape[0])  # W^T: kept units' gradients are whole rows
        for t in range(x.shape[1]):
            g = mask.step_group[t]
            keep, dy = mask.keep[g], dout[:, t]
            if dx is not None:
                dx[:, t].index_copy_(1, keep, dy @ rows[g].t())
            dwt_k = x[:, t].index_select(1, keep).t() @ dy
            dwt.index_add_(0, keep, dwt_k if ctx.scaled else dwt_k * _row_multiplier(mask, g))
        db = dout.sum(dim=(0, 1)) if ctx.has_bias else None
        return dx, dwt.t(), db, None, None


def _kept_rows(weight, mask, scaled):
    """Each kept set's rows of ``W^T`` (``k x n_out``), the mask's values folded in unless ``scaled``: gathered
    from one transposed copy, so that each gather is a block copy of whole rows."""
    wt = weight.t().contiguous()
    rows = [wt.index_select(0, keep) for keep in mask.keep]
    return rows if scaled else [r * _row_multiplier(mask, g) for g, r in enumerate(rows)]


def masked_linear(x, weight, bias, mask, scaled=False):
    """``F.linear`` of ``x`` ``[B, T, n]`` masked per step (``mask`` over ``T`` steps and ``n`` units)."""
    if not isinstance(mask, StructuredMask):
        return F.linear(x if scaled else apply_mask(x, mask), weight, bias)
    if len(mask.keep) == 1:  # one kept set: one product over every step
        w = weight.index_select(1, mask.keep[0])
        return F.linear(x.index_select(2, mask.keep[0]), w if scaled else w * _multiplier(mask, 0), bias)
    return _StepwiseLinear.apply(x, weight, bias, mask, scaled)


class StepProduct:
    """``x_t @ weight^T`` for the steps ``t`` of one forward call, reading only the kept columns of ``x_t``."""

    def __init__(self, weight, mask, scaled=False):
        self.weight, self.mask, self.scaled = weight, mask, scaled
        self.structured = isinstance(mask, StructuredMask)
        self.cache = self.structured and len(mask.keep) <= CACHED_GROUPS
        self._weights = {}
        if self.structured and not self.cache:
            # a fresh set per step: one transposed copy per call makes each step's gather a block copy of whole
            # rows (and its gradient a row-wise add) instead of a strided gather of columns
            self._wt = weight.t().contiguous()
        if mask is not None and not self.structured and not scaled:
            self.dense = mask.to(weight.dtype)

    def __call__(self, x, t):
        if self.mask is None or (self.scaled and not self.structured):
            return F.linear(x, self.weight)
        if not self.structured:
            return F.linear(x * self.dense[t], self.weight)
        g = self.mask.step_group[t]
        keep = self.mask.keep[g]
        x = x.index_select(1, keep)
        if not self.cache:  # scale the (smaller) input rather than the gathered weight
            return torch.mm(x if self.scaled else x * _multiplier(self.mask, g), self._wt.index_select(0, keep))
        w = self._weights.get(g)
        if w is None:  # once per kept set and call, the mask's values folded in
            w = self.weight.index_select(1, keep)
            self._weights[g] = w if self.scaled else w * _multiplier(self.mask, g)
            w = self._weights[g]
        return F.linear(x, w)


class _LSTMPointwise(torch.autograd.Function):
    """``(gates, c_prev) -> (h, c)`` of one LSTM step (gate order i, f, g, o) as one autograd node: a step-by-step
    loop otherwise spends much of its time building and walking the graph of a dozen small ops."""

    @staticmethod
    def forward(ctx, gates, c_prev):
        H = c_prev.shape[1]
        act = gates.sigmoid()
        torch.tanh(gates[:, 2 * H: 3 * H], out=act[:, 2 * H: 3 * H])
        i, f, g, o = act.chunk(4, dim=1)
        c = torch.mul(f, c_prev).addcmul_(i, g)
        tanh_c = c.tanh()
        ctx.save_for_backward(act, c_prev, tanh_c)
        return o * tanh_c, c

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dh, dc):
        act, c_prev, tanh_c = ctx.saved_tensors
        i, f, g, o = act.chunk(4, dim=1)
        dh = dh if dh is not None else torch.zeros_like(c_prev)
        dc = (dc.clone() if dc is not None else torch.zeros_like(c_prev))
        dc.addcmul_(dh * o, 1 - tanh_c * tanh_c)
        dgates = torch.empty_like(act)
        di, df, dg, do = dgates.chunk(4, dim=1)
        torch.mul(dc, g, out=di)
        torch.mul(dc, c_prev, out=df)
        torch.mul(dc, i, out=dg)
        torch.mul(dh, tanh_c, out=do)
        H = c_prev.shape[1]
        deriv = act * (1 - act)  # sigmoid'; the g block is replaced by tanh'
        torch.addcmul(torch.ones_like(g), g, g, value=-1, out=deriv[:, 2 * H: 3 * H])
        return dgates.mul_(deriv), dc.mul_(f)


def lstm_pointwise(gates, c_prev):
    """One LSTM step from its pre-activation gates: ``(h, c)``; the cell state is never dropped."""
    return _LSTMPointwise.apply(gates, c_prev)

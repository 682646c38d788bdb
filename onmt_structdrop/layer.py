"""One LSTM layer in one direction, with dropout on its input (NR) and on h(t-1) (RH), as an autograd Function.

Equations (PyTorch's gate order i, f, g, o; ``m`` and ``r`` are the input and recurrent masks at position t):

    G_t = (m_t * x_t) W_ih^T + b_ih + (r_t * h_prev) W_hh^T + b_hh
    i, f, o = sigmoid(G_t[i, f, o]);  g = tanh(G_t[g])
    c_t = f * c_prev + i * g;  h_t = o * tanh(c_t)          (the cell state is never dropped)

``h_prev`` is h(t-1) going forward and h(t+1) in reverse. The input products of all steps run before the
recurrence (grouped by kept set, see :func:`~onmt_structdrop.compact.project`); the recurrent product runs per
step on the kept units only, and so does its input gradient (output sparsity). Both weight gradients are
computed after the backward recurrence, one product per group of steps.

Sequences are sorted by decreasing length; ``batch_sizes[t]`` rows are active at position t. Inactive rows keep
their state, so forward rows end at their final state and reverse rows start from h0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from .compact import KeptRows, project, project_backward
from .masks import StructuredMask


@dataclass
class LayerPlan:
    input_mask: object  # None, StructuredMask, or a dense [T, n] / [T, B, n] tensor
    recurrent_mask: object
    batch_sizes: Optional[List[int]]  # active rows per position; None when every row is active throughout
    reverse: bool


class _Recurrent:
    """The per-step recurrent product ``(r_t * h) @ W_hh^T`` and its input gradient, compacted when structured."""

    def __init__(self, wt, mask):
        self.wt, self.mask = wt, mask
        self.rows = KeptRows(wt, mask) if isinstance(mask, StructuredMask) else None
        self._pieces = {}

    def pieces(self, g):
        if self.mask.perm is None:  # gathered rows: not worth keeping for every group
            return self.rows.pieces(g)
        if g not in self._pieces:
            self._pieces[g] = self.rows.pieces(g)
        return self._pieces[g]

    def add_product(self, out, h, t):
        if self.rows is None:
            if self.mask is not None:
                m = self.mask[t]
                h = h * (m if m.dim() == 1 else m[: h.shape[0]])
            out.addmm_(h, self.wt)
            return
        g = self.mask.step_group[t]
        self.rows.matmul(out, self.rows.gather(h, g), g, self.pieces(g))

    def input_grad(self, dG, t, dh):
        """Write ``d(h_prev)`` from the gates' gradient into ``dh`` (``a x H``); dropped units get zero."""
        if self.rows is None:
            torch.mm(dG, self.wt.t(), out=dh)
            if self.mask is not None:
                m = self.mask[t]
                dh.mul_(m if m.dim() == 1 else m[: dh.shape[0]])
            return
        g = self.mask.step_group[t]
        dh.zero_()
        dh.index_copy_(1, self.mask.keep[g], self.rows.matmul_t(dG, g, self.pieces(g)))


class StructDropLSTMLayer(torch.autograd.Function):
    """``(x, h0, c0, w_ih, w_hh, b_ih, b_hh) -> (y, h_n, c_n)`` for one layer and direction; ``x`` is ``[T, B, n]``."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, plan: LayerPlan):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        gates = x.new_empty(T, B, 4 * H)
        if b_ih is not None:
            gates.copy_((b_ih + b_hh).expand_as(gates))
        else:
            gates.zero_()
        in_rows = project(x, w_ih.t(), plan.input_mask, gates)
        rec = _Recurrent(w_hh.t(), plan.recurrent_mask)

        y = x.new_zeros(T, B, H)
        cells = x.new_zeros(T, B, H)
        tanh_cells = x.new_zeros(T, B, H)
        h_prev = x.new_zeros(T, B, H)
        c_prev = x.new_zeros(T, B, H)
        h, c = h0, c0
        for t in (range(T - 1, -1, -1) if plan.reverse else range(T)):
            a = B if plan.batch_sizes is None else plan.batch_sizes[t]
            h_prev[t].copy_(h)
            c_prev[t].copy_(c)
            G = gates[t, :a]
            rec.add_product(G, h[:a], t)
            G[:, : 2 * H].sigmoid_()
            G[:, 2 * H: 3 * H].tanh_()
            G[:, 3 * H:].sigmoid_()
            i, f, g, o = G.chunk(4, dim=1)
            c_t, tc_t, h_t = cells[t, :a], tanh_cells[t, :a], y[t, :a]
            torch.mul(f, c[:a], out=c_t).addcmul_(i, g)
            torch.tanh(c_t, out=tc_t)
            torch.mul(o, tc_t, out=h_t)
            if a == B:
                h, c = y[t], cells[t]
            else:
                h, c = h.clone(), c.clone()
                h[:a], c[:a] = h_t, c_t
        ctx.plan, ctx.in_rows = plan, in_rows
        ctx.save_for_backward(x, w_ih, w_hh, gates, tanh_cells, h_prev, c_prev)
        ctx.has_bias = b_ih is not None
        return y, h.clone(), c.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dh_n, dc_n):
        x, w_ih, w_hh, gates, tanh_cells, h_prev, c_prev = ctx.saved_tensors
        plan = ctx.plan
        T, B, _ = x.shape
        H = w_hh.shape[1]
        rec = _Recurrent(w_hh.t(), plan.recurrent_mask)
        dy = dy if dy is not None else x.new_zeros(T, B, H)
        dh = dh_n.clone() if dh_n is not None else x.new_zeros(B, H)
        dc = dc_n.clone() if dc_n is not None else x.new_zeros(B, H)
        dgates = x.new_zeros(T, B, 4 * H)
        scratch = x.new_empty(B, H)
        for t in (range(T) if plan.reverse else range(T - 1, -1, -1)):
            a = B if plan.batch_sizes is None else plan.batch_sizes[t]
            i, f, g, o = gates[t, :a].chunk(4, dim=1)
            tc = tanh_cells[t, :a]
            dh_a = dh[:a].add_(dy[t, :a])
            dc_a = dc[:a]
            di, df, dg, do = dgates[t, :a].chunk(4, dim=1)
            # dc += dh * o * (1 - tanh(c)^2)
            s = scratch[:a]
            torch.mul(tc, tc, out=s).neg_().add_(1).mul_(o).mul_(dh_a)
            dc_a.add_(s)
            torch.mul(dh_a, tc, out=do).mul_(o - o * o)
            torch.mul(dc_a, g, out=di).mul_(i - i * i)
            torch.mul(dc_a, c_prev[t, :a], out=df).mul_(f - f * f)
            torch.mul(dc_a, i, out=dg).mul_(1 - g * g)
            dc_a.mul_(f)
            rec.input_grad(dgates[t, :a], t, dh_a)

        need_x, need_h0, need_c0 = ctx.needs_input_grad[0:3]
        dx, dw_ih_t = project_backward(x, w_ih.t(), plan.input_mask, dgates, ctx.in_rows, need_x)
        _, dw_hh_t = project_backward(h_prev, w_hh.t(), plan.recurrent_mask, dgates, rec.rows, False)
        db = dgates.sum(dim=(0, 1)) if ctx.has_bias else None
        return (dx, dh if need_h0 else None, dc if need_c0 else None, dw_ih_t.t(), dw_hh_t.t(), db, db, None)

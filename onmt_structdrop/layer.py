"""One LSTM layer in one direction, with dropout on its input (NR) and on h(t-1) (RH), as an autograd Function.

Equations (PyTorch's gate order i, f, g, o; ``m`` and ``r`` are the input and recurrent masks at position t):

    G_t = (m_t * x_t) W_ih^T + b_ih + (r_t * h_prev) W_hh^T + b_hh
    i, f, o = sigmoid(G_t[i, f, o]);  g = tanh(G_t[g])
    c_t = f * c_prev + i * g;  h_t = o * tanh(c_t)          (the cell state is never dropped)

``h_prev`` is h(t-1) going forward and h(t+1) in reverse. The input products of all steps run before the
recurrence (one per group of steps sharing a kept set, see :func:`~onmt_structdrop.compact.project`); the
recurrent product runs per step on the kept units only, and so does its input gradient (output sparsity). Both
weight gradients are computed after the backward recurrence, again one product per group.

Sequences are sorted by decreasing length; ``batch_sizes[t]`` rows are active at position t. Inactive rows keep
their state, so forward rows end at their final state and reverse rows start from h0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from .compact import KeptRows, project, project_backward, step_order
from .masks import StructuredMask


@dataclass
class LayerPlan:
    input_mask: object  # None, a StructuredMask, or a dense [T, n] / [T, B, n] tensor
    recurrent_mask: object
    batch_sizes: Optional[List[int]]  # active rows per position; None when every row is active throughout
    reverse: bool


class _Recurrent:
    """The per-step recurrent product ``(r_t * h) @ W_hh^T`` and its input gradient, compacted when structured."""

    def __init__(self, wt, mask):
        self.wt, self.mask = wt, mask
        self.rows = KeptRows(wt, mask) if isinstance(mask, StructuredMask) else None

    def add_product(self, out, h, t):
        if self.rows is None:
            if self.mask is not None:
                m = self.mask[t]
                h = h * (m if m.dim() == 1 else m[: h.shape[0]])
            out.addmm_(h, self.wt)
            return
        g = self.mask.step_group[t]
        self.rows.matmul(out, self.rows.gather(h, g), g)

    def input_grad(self, dG, t, dh):
        """Write ``d(h_prev)`` from the gates' gradient into ``dh`` (``a x H``); dropped units get zero."""
        if self.rows is None:
            torch.mm(dG, self.wt.t(), out=dh)
            if self.mask is not None:
                m = self.mask[t]
                dh.mul_(m if m.dim() == 1 else m[: dh.shape[0]])
            return
        self.rows.scatter_input_grad(dG, self.mask.step_group[t], dh)


def _lengths(batch_sizes, B):
    lengths = [0] * B
    for size in batch_sizes:
        for b in range(size):
            lengths[b] += 1
    return lengths


def _previous(states, first, reverse, lengths):
    """``[T, B, H]``: the state each step starts from, given each step's result ``states`` and the initial one."""
    if reverse:
        prev = torch.cat([states[1:], first.unsqueeze(0)])
        if lengths is not None:  # a reverse sequence starts at its own last position, from the initial state
            rows = [b for b, n in enumerate(lengths) if n < len(states)]
            if rows:
                idx = torch.tensor(rows, device=states.device)
                prev[torch.tensor([lengths[b] - 1 for b in rows], device=states.device), idx] = first[idx]
        return prev
    return torch.cat([first.unsqueeze(0), states[:-1]])


class StructDropLSTMLayer(torch.autograd.Function):
    """``(x, h0, c0, w_ih, w_hh, b_ih, b_hh) -> (y, h_n, c_n)`` for one layer and direction; ``x`` is ``[T, B, n]``."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, plan: LayerPlan):
        T, B, _ = x.shape
        H = w_hh.shape[1]
        packed = plan.batch_sizes is not None
        pos = step_order(plan.input_mask, T)  # storage row of each step's gates
        gates = x.new_empty(T, B, 4 * H)
        if b_ih is not None:
            gates.copy_((b_ih + b_hh).expand_as(gates))
        else:
            gates.zero_()
        in_rows = project(x, w_ih.t(), plan.input_mask, gates)
        rec = _Recurrent(w_hh.t(), plan.recurrent_mask)

        alloc = x.new_zeros if packed else x.new_empty  # padded positions must read as zeros downstream
        y, cells, tanh_cells = alloc(T, B, H), alloc(T, B, H), alloc(T, B, H)
        h, c = (h0.clone(), c0.clone()) if packed else (h0, c0)
        for t in (range(T - 1, -1, -1) if plan.reverse else range(T)):
            a = B if not packed else plan.batch_sizes[t]
            G = gates[pos[t], :a]
            rec.add_product(G, h[:a], t)
            G[:, : 2 * H].sigmoid_()
            G[:, 2 * H: 3 * H].tanh_()
            G[:, 3 * H:].sigmoid_()
            i, f, g, o = G.chunk(4, dim=1)
            c_t, tc_t, h_t = cells[t, :a], tanh_cells[t, :a], y[t, :a]
            torch.mul(f, c[:a], out=c_t).addcmul_(i, g)
            torch.tanh(c_t, out=tc_t)
            torch.mul(o, tc_t, out=h_t)
            if packed:  # inactive rows keep their state
                h[:a], c[:a] = h_t, c_t
            else:
                h, c = h_t, c_t
        ctx.plan, ctx.pos, ctx.in_rows, ctx.rec = plan, pos, in_rows, rec
        ctx.has_bias = b_ih is not None
        ctx.save_for_backward(x, h0, c0, w_ih, gates, y, cells, tanh_cells)
        return y, h.clone() if not packed else h, c.clone() if not packed else c

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy, dh_n, dc_n):
        x, h0, c0, w_ih, gates, y, cells, tanh_cells = ctx.saved_tensors
        plan, pos, rec = ctx.plan, ctx.pos, ctx.rec
        T, B, _ = x.shape
        H = y.shape[2]
        packed = plan.batch_sizes is not None
        lengths = _lengths(plan.batch_sizes, B) if packed else None
        c_prev = _previous(cells, c0, plan.reverse, lengths)

        dh = dh_n.clone() if dh_n is not None else x.new_zeros(B, H)
        dc = dc_n.clone() if dc_n is not None else x.new_zeros(B, H)
        dgates = x.new_zeros(T, B, 4 * H) if packed else x.new_empty(T, B, 4 * H)
        deriv, ones = x.new_empty(B, 4 * H), x.new_ones(B, H)
        for t in (range(T) if plan.reverse else range(T - 1, -1, -1)):
            a = B if not packed else plan.batch_sizes[t]
            S = gates[pos[t], :a]
            i, f, g, o = S.chunk(4, dim=1)
            tc = tanh_cells[t, :a]
            dh_a, dc_a = dh[:a], dc[:a]
            if dy is not None:
                dh_a.add_(dy[t, :a])
            # local derivatives of the activations: s(1 - s) for the sigmoid gates, 1 - g^2 for g
            D = deriv[:a]
            torch.addcmul(S, S, S, value=-1, out=D)
            torch.addcmul(ones[:a], g, g, value=-1, out=D[:, 2 * H: 3 * H])
            dc_a.addcmul_(dh_a, torch.addcmul(ones[:a], tc, tc, value=-1).mul_(o))
            dG = dgates[pos[t], :a]
            di, df, dg, do = dG.chunk(4, dim=1)
            torch.mul(dc_a, g, out=di)
            torch.mul(dc_a, c_prev[t, :a], out=df)
            torch.mul(dc_a, i, out=dg)
            torch.mul(dh_a, tc, out=do)
            dG.mul_(D)
            dc_a.mul_(f)
            rec.input_grad(dG, t, dh_a)

        need_x, need_h0, need_c0 = ctx.needs_input_grad[0:3]
        dx, dw_ih_t = project_backward(x, w_ih.t(), plan.input_mask, dgates, pos, ctx.in_rows, need_x)
        h_prev = _previous(y, h0, plan.reverse, lengths)
        _, dw_hh_t = project_backward(h_prev, rec.wt, plan.recurrent_mask, dgates, pos, rec.rows, False)
        db = dgates.sum(dim=(0, 1)) if ctx.has_bias else None
        return (dx, dh if need_h0 else None, dc if need_c0 else None, dw_ih_t.t(), dw_hh_t.t(), db, db, None)

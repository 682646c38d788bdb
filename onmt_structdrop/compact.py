"""Compacted products: matrix products that skip the units a structured mask drops (torch backend).

Every product uses a weight ``wt`` (``n_units x n_out``, i.e. ``W^T``) and an activation ``a`` (``M x n_units``)
whose columns a :class:`~onmt_structdrop.masks.StructuredMask` drops. For a group of steps with kept units ``K``
and multiplier ``s``:

    forward        out += s * a[:, K] @ wt[K]          (the reduction dimension shrinks to k)
    input grad     da[:, K] = s * dout @ wt[K]^T        (only kept columns are computed; the rest are zero)
    weight grad    dwt[K] += s * a[:, K]^T @ dout       (only kept rows are touched)

:class:`KeptRows` finds ``wt[K]`` without a copy per step where it can: in the ``window`` layout the rows are one
or two contiguous slices of a permuted copy made once per call; otherwise they are gathered (once per call for
``batch``). Sequence-wide products (:func:`project`) run once per group of steps sharing a kept set; they read
and write a ``[T, B, n_out]`` buffer whose rows are stored in :func:`step_order`, so each group's rows are one
contiguous slice.
"""
from __future__ import annotations

import torch

from .masks import StructuredMask


def step_order(mask, steps):
    """Storage row of each time step (a list): steps grouped by kept set for structured masks, else identity."""
    if not isinstance(mask, StructuredMask):
        return list(range(steps))
    pos = [0] * steps
    row = 0
    for group in mask.group_steps:
        for t in group.tolist():
            pos[t] = row
            row += 1
    return pos


def rows_for(x, pos, steps):
    """Rows of ``x`` (stored in ``pos`` order) holding time ``steps``: a view when they are contiguous."""
    idx = [pos[t] for t in steps]
    if idx == list(range(idx[0], idx[0] + len(idx))):
        return x[idx[0]:idx[0] + len(idx)]
    return x.index_select(0, torch.tensor(idx, device=x.device))


class KeptRows:
    """The rows of ``wt`` that each group of a structured mask keeps, and their accumulated gradient."""

    def __init__(self, wt: torch.Tensor, mask: StructuredMask):
        self.mask = mask
        self.wt = wt.contiguous()  # row gathers and slices of a transposed view are slow
        self.source = self.wt.index_select(0, mask.perm) if mask.perm is not None else None
        self.alpha = 1.0 if mask.values is not None else mask.scale
        self._cache = {}
        self._cacheable = mask.perm is not None or len(mask.keep) == 1
        self._grad = None

    def pieces(self, g):
        """``[(rows, c0, c1)]``: weight rows that multiply columns ``c0:c1`` of the gathered activation."""
        if g in self._cache:
            return self._cache[g]
        k = len(self.mask.keep[g])
        if self.source is None:
            pieces = [(self.wt.index_select(0, self.mask.keep[g]), 0, k)] if k else []
        else:
            n, o = self.mask.n, self.mask.offsets[g]
            pieces = ([(self.source[o:o + k], 0, k)] if o + k <= n else
                      [(self.source[o:], 0, n - o), (self.source[:o + k - n], n - o, k)])
        if self._cacheable:
            self._cache[g] = pieces
        return pieces

    def gather(self, a, g):
        """Kept columns of ``a`` for group ``g``, times their multipliers when those differ per unit."""
        a_k = a.index_select(-1, self.mask.keep[g])
        if self.mask.values is not None:
            a_k.mul_(self.mask.values[g].to(a.dtype))
        return a_k

    def matmul(self, out, a_k, g):
        """``out += s * a_k @ wt[K_g]``."""
        for rows, c0, c1 in self.pieces(g):
            out.addmm_(a_k[:, c0:c1], rows, alpha=self.alpha)
        return out

    def matmul_t(self, dout, g):
        """``s * dout @ wt[K_g]^T``: the gradient of the kept columns only, ``M x k``."""
        parts = [torch.mm(dout, rows.t()) for rows, _, _ in self.pieces(g)]
        if not parts:
            return dout.new_zeros(dout.shape[0], 0)
        da_k = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        if self.alpha != 1.0:
            da_k.mul_(self.alpha)
        if self.mask.values is not None:
            da_k.mul_(self.mask.values[g].to(da_k.dtype))
        return da_k

    def scatter_input_grad(self, dout, g, da):
        """``da[:, K_g] = s * dout @ wt[K_g]^T``, ``da[:, not K_g] = 0``."""
        da.zero_()
        if len(self.mask.keep[g]):
            da.index_copy_(1, self.mask.keep[g], self.matmul_t(dout, g))

    def accumulate_grad(self, a_k, dout, g):
        """``dwt[K_g] += s * a_k^T @ dout`` into kept rows only."""
        k = len(self.mask.keep[g])
        if not k:
            return
        if self.source is not None:
            if self._grad is None:
                self._grad = torch.zeros_like(self.source)
            n, o = self.mask.n, self.mask.offsets[g]
            head = min(k, n - o)
            self._grad[o:o + head].addmm_(a_k[:, :head].t(), dout, alpha=self.alpha)
            if head < k:
                self._grad[:k - head].addmm_(a_k[:, head:].t(), dout, alpha=self.alpha)
            return
        if len(self.mask.keep) == 1:  # one kept set: accumulate compactly, scatter once at the end
            if self._grad is None:
                self._grad = a_k.new_zeros(k, dout.shape[1])
            self._grad.addmm_(a_k.t(), dout, alpha=self.alpha)
            return
        if self._grad is None:
            self._grad = torch.zeros_like(self.wt)
        self._grad.index_add_(0, self.mask.keep[g], torch.mm(a_k.t(), dout), alpha=self.alpha)

    def weight_grad(self):
        """The accumulated ``dwt`` in the original unit order."""
        grad, self._grad = self._grad, None  # a second backward (retain_graph) starts afresh
        if grad is None:
            return torch.zeros_like(self.wt)
        if self.source is not None:
            return torch.empty_like(grad).index_copy_(0, self.mask.perm, grad)
        if len(self.mask.keep) == 1:
            return torch.zeros_like(self.wt).index_copy_(0, self.mask.keep[0], grad)
        return grad


def _dense(mask):
    return None if mask is None else (mask.unsqueeze(1) if mask.dim() == 2 else mask)


def project(a, wt, mask, out):
    """``out[pos[t]] += mask_t(a[t]) @ wt`` for every step, with ``pos = step_order(mask, T)``.

    ``a`` is ``[T, B, n]``; ``out`` is ``[T, B, n_out]``. ``mask`` is ``None`` (no dropout), a dense
    ``[T, n]``/``[T, B, n]`` tensor (multiplied in; full products) or a :class:`StructuredMask` (compacted, one
    product per group of steps). Returns the :class:`KeptRows` used (``None`` when not structured).
    """
    T, B, n = a.shape
    if not isinstance(mask, StructuredMask):
        a_m = a if mask is None else a * _dense(mask)
        out.view(T * B, -1).addmm_(a_m.reshape(T * B, n), wt)
        return None
    rows = KeptRows(wt, mask)
    start = 0
    for g, steps in enumerate(mask.group_steps):
        m = len(steps)
        a_g = a if m == T else a.index_select(0, steps.to(a.device))
        rows.matmul(out[start:start + m].view(m * B, -1), rows.gather(a_g.reshape(m * B, n), g), g)
        start += m
    return rows


def project_backward(a, wt, mask, dout, pos, rows=None, need_input_grad=True):
    """Gradients of :func:`project` as ``(da or None, dwt)``, touching only kept units.

    ``dout`` is ``[T, B, n_out]`` with step ``t`` stored at row ``pos[t]`` (any order: it need not be
    ``mask``'s own).
    """
    T, B, n = a.shape
    n_out = dout.shape[-1]
    if not isinstance(mask, StructuredMask):
        if pos != list(range(T)):
            dout = dout.index_select(0, torch.tensor(pos, device=dout.device))
        m = _dense(mask)
        a_m = a if m is None else a * m
        dwt = torch.mm(a_m.reshape(T * B, n).t(), dout.reshape(T * B, n_out))
        da = None
        if need_input_grad:
            da = torch.mm(dout.reshape(T * B, n_out), wt.t()).view(T, B, n)
            if m is not None:
                da.mul_(m)
        return da, dwt
    rows = rows if rows is not None else KeptRows(wt, mask)
    da = a.new_empty(T, B, n) if need_input_grad else None
    for g, steps in enumerate(mask.group_steps):
        m = len(steps)
        steps_dev = steps.to(a.device)
        a_g = a if m == T else a.index_select(0, steps_dev)
        d_g = rows_for(dout, pos, steps.tolist()).reshape(m * B, n_out)
        rows.accumulate_grad(rows.gather(a_g.reshape(m * B, n), g), d_g, g)
        if need_input_grad:
            da_g = a.new_empty(m * B, n)
            rows.scatter_input_grad(d_g, g, da_g)
            da.index_copy_(0, steps_dev, da_g.view(m, B, n))
    return da, rows.weight_grad()

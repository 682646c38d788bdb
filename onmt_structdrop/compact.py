"""Compacted products: matrix products that skip the units a structured mask drops (torch backend).

All products use a weight stored as ``wt`` (``n_units x n_out``, i.e. ``W^T``) and an activation ``a``
(``M x n_units``) whose columns a :class:`~onmt_structdrop.masks.StructuredMask` drops. For a group of steps
with kept units ``K`` and multiplier ``s``:

    forward        out += s * a[:, K] @ wt[K]          (the reduction dimension shrinks to k)
    input grad     da[:, K] = s * dout @ wt[K]^T        (only kept columns are computed; the rest are zero)
    weight grad    dwt[K] += s * a[:, K]^T @ dout       (only kept rows are touched)

:class:`KeptRows` finds ``wt[K]`` without copying where it can: in the ``window`` layout the rows are one or two
contiguous slices of a permuted copy made once per call; otherwise they are gathered.
"""
from __future__ import annotations

import torch

from .masks import StructuredMask


class KeptRows:
    """The rows of ``wt`` that each group of a structured mask keeps, and their gradient."""

    def __init__(self, wt: torch.Tensor, mask: StructuredMask):
        self.mask = mask
        self.wt = wt
        # Window layout: permute the units once so every group's rows are contiguous slices.
        self.source = wt.index_select(0, mask.perm) if mask.perm is not None else None
        self._grad_source = None
        self._grad = None

    def pieces(self, g):
        """``[(rows, c0, c1)]``: weight rows that multiply columns ``c0:c1`` of the gathered activation."""
        k = len(self.mask.keep[g])
        if self.source is None:
            return [(self.wt.index_select(0, self.mask.keep[g]), 0, k)] if k else []
        n, o = self.mask.n, self.mask.offsets[g]
        if o + k <= n:
            return [(self.source[o:o + k], 0, k)]
        return [(self.source[o:], 0, n - o), (self.source[:o + k - n], n - o, k)]

    def gather(self, a, g):
        """Kept columns of ``a`` for group ``g``, times their multipliers when those differ per unit."""
        a_k = a.index_select(-1, self.mask.keep[g])
        if self.mask.values is not None:
            a_k = a_k * self.mask.values[g].to(a.dtype)
        return a_k

    @property
    def alpha(self):
        return 1.0 if self.mask.values is not None else self.mask.scale

    def matmul(self, out, a_k, g, pieces=None):
        """``out += s * a_k @ wt[K_g]``."""
        for rows, c0, c1 in pieces if pieces is not None else self.pieces(g):
            out.addmm_(a_k[:, c0:c1], rows, alpha=self.alpha)
        return out

    def matmul_t(self, dout, g, pieces=None):
        """``s * dout @ wt[K_g]^T``: the gradient of the kept columns only, ``M x k``."""
        parts = [torch.mm(dout, rows.t()) for rows, _, _ in (pieces if pieces is not None else self.pieces(g))]
        if not parts:
            return dout.new_zeros(dout.shape[0], 0)
        da_k = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        if self.alpha != 1.0:
            da_k.mul_(self.alpha)
        if self.mask.values is not None:
            da_k.mul_(self.mask.values[g].to(da_k.dtype))
        return da_k

    def accumulate_grad(self, a_k, dout, g):
        """``dwt[K_g] += s * a_k^T @ dout`` into kept rows only."""
        if self.source is not None:
            if self._grad_source is None:
                self._grad_source = torch.zeros_like(self.source)
            n, o, k = self.mask.n, self.mask.offsets[g], len(self.mask.keep[g])
            for rows, c0, c1 in ((slice(o, min(o + k, n)), 0, min(k, n - o)), (slice(0, o + k - n), n - o, k)):
                if c1 > c0:
                    self._grad_source[rows].addmm_(a_k[:, c0:c1].t(), dout, alpha=self.alpha)
            return
        if self._grad is None:
            self._grad = torch.zeros_like(self.wt)
        if len(self.mask.keep[g]):
            self._grad.index_add_(0, self.mask.keep[g], torch.mm(a_k.t(), dout), alpha=self.alpha)

    def weight_grad(self):
        """The accumulated ``dwt`` in the original unit order (zeros if nothing was accumulated)."""
        if self.source is not None:
            grad = torch.zeros_like(self.wt)
            if self._grad_source is not None:
                grad.index_copy_(0, self.mask.perm, self._grad_source)
            return grad
        return self._grad if self._grad is not None else torch.zeros_like(self.wt)


def project(a, wt, mask, out):
    """``out[t] += mask(a[t]) @ wt`` for every step; ``a`` is ``[T, B, n]``, ``out`` is ``[T, B, n_out]``.

    ``mask`` is ``None`` (no dropout), a dense ``[T, n]``/``[T, B, n]`` tensor (applied by multiplication,
    full products) or a :class:`StructuredMask` (compacted: one product per group of steps sharing a kept set).
    Returns the :class:`KeptRows` used, for the backward pass.
    """
    T, B, n = a.shape
    if not isinstance(mask, StructuredMask):
        a_m = a if mask is None else a * (mask.unsqueeze(1) if mask.dim() == 2 else mask)
        out.view(T * B, -1).addmm_(a_m.reshape(T * B, n), wt)
        return None
    rows = KeptRows(wt, mask)
    for g, steps in enumerate(mask.group_steps):
        every_step = len(steps) == T
        a_g = a if every_step else a.index_select(0, steps)
        a_k = rows.gather(a_g.reshape(-1, n), g)
        if every_step:
            rows.matmul(out.view(T * B, -1), a_k, g)
        else:
            out_g = out.index_select(0, steps)
            rows.matmul(out_g.view(-1, out.shape[-1]), a_k, g)
            out.index_copy_(0, steps, out_g)
    return rows


def project_backward(a, wt, mask, dout, rows=None, need_input_grad=True):
    """Gradients of :func:`project`: ``(da or None, dwt)``, touching only kept units."""
    T, B, n = a.shape
    n_out = dout.shape[-1]
    if not isinstance(mask, StructuredMask):
        m = None if mask is None else (mask.unsqueeze(1) if mask.dim() == 2 else mask)
        a_m = a if m is None else a * m
        dwt = torch.mm(a_m.reshape(T * B, n).t(), dout.reshape(T * B, n_out))
        da = None
        if need_input_grad:
            da = torch.mm(dout.reshape(T * B, n_out), wt.t()).view(T, B, n)
            if m is not None:
                da.mul_(m)
        return da, dwt
    rows = rows if rows is not None else KeptRows(wt, mask)
    da = a.new_zeros(T, B, n) if need_input_grad else None
    for g, steps in enumerate(mask.group_steps):
        every_step = len(steps) == T
        a_g = a if every_step else a.index_select(0, steps)
        d_g = (dout if every_step else dout.index_select(0, steps)).reshape(-1, n_out)
        a_k = rows.gather(a_g.reshape(-1, n), g)
        rows.accumulate_grad(a_k, d_g, g)
        if need_input_grad:
            da_g = a.new_zeros(len(steps) * B, n)
            da_g.index_copy_(1, mask.keep[g], rows.matmul_t(d_g, g))
            da.index_copy_(0, steps, da_g.view(len(steps), B, n))
    return da, rows.weight_grad()

"""Compacted products: matrix products that skip the units a structured mask drops (torch backend).

Every product uses a weight ``wt`` (``n_units x n_out``, i.e. ``W^T``) and an activation ``a`` (``M x n_units``)
whose columns a :class:`~onmt_structdrop.masks.StructuredMask` drops. For a group of steps with kept units ``K``
and multiplier ``s``:

    forward        out += s * a[:, K] @ wt[K]          (the reduction dimension shrinks to k)
    input grad     da[:, K] = s * dout @ wt[K]^T        (only kept columns are computed; the rest are zero)
    weight grad    dwt[K] += s * a[:, K]^T @ dout       (only kept rows are touched)

:class:`KeptRows` prepares each group's kept rows ``wt[K]`` once per call when a mask has few kept sets: in
``pool`` mode every set is a slice of one permuted copy of the weight, in ``batch`` mode the one set is
gathered; with a fresh set per step (``time``) the rows are gathered at every use. Sequence-wide products
(:func:`project`) run once per group; they read and write a ``[T, B, n_out]`` buffer whose rows are stored in
:func:`step_order`, so each group's rows are one contiguous slice.
"""
from __future__ import annotations

import torch

from .masks import StructuredMask

CACHED_GROUPS = 8  # a mask with at most this many kept sets gets each set's rows prepared once per call


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


def _group_rows(mask, B):
    """``(g, r0, r1)``: the rows of group ``g`` in a ``[T * B, ...]`` buffer stored in :func:`step_order`."""
    start = 0
    for g, steps in enumerate(mask.group_steps):
        yield g, start * B, (start + len(steps)) * B
        start += len(steps)


class KeptRows:
    """The rows of ``wt`` that each group of a structured mask keeps, and their accumulated gradient.

    ``wt`` is normally the transposed view of a row-major weight ``w`` (``n_out x n``): kept rows of ``wt`` are
    then gathered as columns of ``w``. With few kept sets the rows are prepared once per call (strided views of
    one transposed copy for regularly strided sets, one permuted copy for window sets, one gather of every set
    otherwise); with many, a set's rows are gathered at each use. ``layout`` says which (the benchmark prints
    it: a gather is where a mode pays for its irregularity).
    """

    def __init__(self, wt: torch.Tensor, mask: StructuredMask):
        self.mask, self.wt = mask, wt
        self.alpha = 1.0 if mask.values is not None else mask.scale
        self._index, self._grad = {}, None
        w = wt.t()
        k = [len(keep) for keep in mask.keep]
        if mask.strides is not None:
            # every set is a regular stride of units (rbd): with one transposed copy of the weight per call,
            # each set's rows are a strided view, a valid BLAS operand: nothing is gathered
            source = wt.contiguous()
            self._rows = [source[start::step] for start, step in mask.strides]
            self.layout = "strided views"
        elif mask.perm is not None:
            # Every set is a window of one permutation: one permuted copy (extended by the units that wrapping
            # windows read past its end) holds them all, each set's rows are one slice of it, and the per-step
            # products share one working set.
            extra = max(0, max(o + kg for o, kg in zip(mask.offsets, k)) - mask.n)
            source = w.index_select(1, torch.cat([mask.perm, mask.perm[:extra]])).t()
            self._rows = [source[o:o + kg] for o, kg in zip(mask.offsets, k)]
            self.layout = "slices of one permuted copy"
        elif len(mask.keep) <= CACHED_GROUPS:  # one pass over the weight gathers every set's rows
            rows = w.index_select(1, torch.cat(mask.keep)).t()
            starts = [sum(k[:g]) for g in range(len(k) + 1)]
            self._rows = [rows[starts[g]:starts[g + 1]] for g in range(len(k))]
            self.layout = "one gather per call"
        else:  # a fresh set per use: a contiguous wt makes each gather a block copy
            self._rows, self._contiguous = None, wt.contiguous()
            self.layout = "a gather per use"

    def rows(self, g):
        """``wt[K_g]``: ``k x n_out``."""
        if self._rows is not None:
            return self._rows[g]
        return self._contiguous.index_select(0, self.mask.keep[g])

    def gather(self, a, g):
        """Kept columns of ``a`` for group ``g``, times their multipliers when those differ per unit."""
        a_k = a.index_select(-1, self.mask.keep[g])
        if self.mask.values is not None:
            a_k.mul_(self.mask.values[g].to(a.dtype))
        return a_k

    def matmul(self, out, a_k, g):
        """``out += s * a_k @ wt[K_g]``."""
        if a_k.shape[1]:
            out.addmm_(a_k, self.rows(g), alpha=self.alpha)
        return out

    def matmul_t(self, dout, g):
        """``s * dout @ wt[K_g]^T``: the gradient of the kept columns only, ``M x k``."""
        rows = self.rows(g)
        da_k = torch.addmm(dout.new_empty(dout.shape[0], rows.shape[0]), dout, rows.t(), beta=0, alpha=self.alpha)
        if self.mask.values is not None:
            da_k.mul_(self.mask.values[g].to(da_k.dtype))
        return da_k

    def scatter_input_grad(self, dout, g, da):
        """``da[:, K_g] = s * dout @ wt[K_g]^T``, ``da[:, not K_g] = 0``."""
        da.zero_()
        keep = self.mask.keep[g]
        if len(keep):
            index = self._index.get(g)
            if index is None or index.shape[0] < da.shape[0]:
                index = self._index[g] = keep.expand(da.shape[0], len(keep))
            da.scatter_(1, index[: da.shape[0]], self.matmul_t(dout, g))

    def accumulate_grad(self, a_k, dout, g):
        """``dwt[K_g] += s * a_k^T @ dout`` into kept rows only."""
        k = a_k.shape[1]
        if not k:
            return
        if len(self.mask.keep) == 1:  # one kept set: accumulate compactly, scatter once at the end
            if self._grad is None:
                self._grad = a_k.new_zeros(k, dout.shape[1])
            self._grad.addmm_(a_k.t(), dout, alpha=self.alpha)
            return
        if self._grad is None:
            self._grad = dout.new_zeros(self.mask.n, dout.shape[1])
        self._grad.index_add_(0, self.mask.keep[g], torch.mm(a_k.t(), dout), alpha=self.alpha)

    def weight_grad(self):
        """The accumulated ``dwt`` (``n x n_out``) in the original unit order."""
        grad, self._grad = self._grad, None  # a second backward (retain_graph) starts afresh
        n, n_out = self.wt.shape
        if grad is None:
            return self.wt.new_zeros(n_out, n).t()
        if len(self.mask.keep) == 1:
            return grad.new_zeros(n_out, n).index_copy_(1, self.mask.keep[0], grad.t()).t()
        return grad


def _dense(mask):
    return None if mask is None else (mask.unsqueeze(1) if mask.dim() == 2 else mask)


def _steps_of(a, mask, g):
    steps = mask.group_steps[g]
    return a if len(steps) == a.shape[0] else a.index_select(0, steps.to(a.device))


def project(a, wt, mask, out):
    """``out[pos[t]] += mask_t(a[t]) @ wt`` for every step, with ``pos = step_order(mask, T)``.

    ``a`` is ``[T, B, n]``; ``out`` is ``[T, B, n_out]``. ``mask`` is ``None`` (no dropout), a dense
    ``[T, n]``/``[T, B, n]`` tensor (multiplied in; full products) or a :class:`StructuredMask` (compacted, one
    product per group of steps). Returns the :class:`KeptRows` used (``None`` when not structured).
    """
    T, B, n = a.shape
    flat = out.view(T * B, -1)
    if not isinstance(mask, StructuredMask):
        a_m = a if mask is None else a * _dense(mask)
        flat.addmm_(a_m.reshape(T * B, n), wt)
        return None
    rows = KeptRows(wt, mask)
    for g, r0, r1 in _group_rows(mask, B):
        rows.matmul(flat[r0:r1], rows.gather(_steps_of(a, mask, g).reshape(-1, n), g), g)
    return rows


def project_backward(a, wt, mask, dout, pos, rows=None, need_input_grad=True):
    """Gradients of :func:`project` as ``(da or None, dwt)``, touching only kept units.

    ``dout`` is ``[T, B, n_out]`` with step ``t`` stored at row ``pos[t]`` (any order: it need not be
    ``mask``'s own).
    """
    T, B, n = a.shape
    n_out = dout.shape[-1]
    own = step_order(mask, T)
    if pos != own:  # bring dout's rows into this mask's step order
        order = sorted(range(T), key=own.__getitem__)
        dout = dout.index_select(0, torch.tensor([pos[t] for t in order], device=dout.device))
    flat = dout.reshape(T * B, n_out)
    if not isinstance(mask, StructuredMask):
        m = _dense(mask)
        a_m = (a if m is None else a * m).reshape(T * B, n)
        da = None
        if need_input_grad:
            da = torch.mm(flat, wt.t()).view(T, B, n)
            if m is not None:
                da.mul_(m)
        return da, torch.mm(a_m.t(), flat)
    rows = rows if rows is not None else KeptRows(wt, mask)
    da = a.new_empty(T, B, n) if need_input_grad else None
    for g, r0, r1 in _group_rows(mask, B):
        d_g = flat[r0:r1]
        rows.accumulate_grad(rows.gather(_steps_of(a, mask, g).reshape(-1, n), g), d_g, g)
        if need_input_grad:
            steps = mask.group_steps[g].to(a.device)
            da_g = a.new_empty(r1 - r0, n)
            rows.scatter_input_grad(d_g, g, da_g)
            da.index_copy_(0, steps, da_g.view(-1, B, n))
    return da, rows.weight_grad()

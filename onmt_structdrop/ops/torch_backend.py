"""The ``torch`` backend: every operation of the seam as torch calls (MKL/oneDNN on CPU, cuBLAS on GPU).

It serves every device, dtype and plan, so it is the last in line. Its layout tricks are its own: a mask with
few kept sets gets each set's weight rows prepared once per call (:class:`_KeptRows`: strided views of one
transposed copy for regularly strided sets, slices of one permuted copy for window sets, one gather otherwise),
and a layer's gates are stored grouped by kept set, so that the input products of all steps sharing a set run
as one product.
"""
from __future__ import annotations

import sys

import torch

from . import CACHED_SETS
from .packed import PackedMask

NAME = "torch"


def available():
    return True, ""


def details():
    """What this backend computes with, for a benchmark's report."""
    return ""


def declines(op, device, dtype, plan=None):
    """Why this backend cannot serve ``op`` (None: it can). The torch backend serves everything."""
    return None


def compaction_pays(op, plan):
    """Whether this backend's products on the kept units beat its dense ones for ``plan``. A whole sequence's
    product (``sequence``, ``rows``): only with one kept set for every step (``batch``: one product on the kept
    units). With a set per step, gathering each step's kept weight rows costs more than it saves (PTB's 200 ->
    10000 output layer at p = 0.3 on one CPU thread: 0.71x of ``nn.Linear`` compacted, 0.89x with the masks
    multiplied in; docs/benchmarks.md, "Design decisions"), and rows whose steps' sets interleave would have their
    outputs reordered besides. A layer's and a step's products: always."""
    if op in ("sequence", "rows"):
        return plan.num_sets == 1
    return True


# ---- primitives ------------------------------------------------------------------------------------------
def kept_rows(wt, keep):
    """``wt[K]`` (``k x n_out``) as a tensor a product can read."""
    return wt.index_select(0, keep)


def add_rows(dwt, keep, drows):
    """``dwt[K] += drows``: a gradient of kept rows into the full weight gradient."""
    return dwt.index_add_(0, keep, drows)


def _scaled(a, keep, mult):
    """``a[:, K]`` times the kept units' multipliers when they differ per unit (a scalar is left to alpha)."""
    a_k = a.index_select(-1, keep)
    return a_k.mul_(mult.to(a.dtype)) if torch.is_tensor(mult) else a_k


def _alpha(mult, alpha):
    return alpha if torch.is_tensor(mult) else alpha * mult


def kept_product(out, a, keep, mult, rows, alpha=1.0):
    """``out += alpha * (a[:, K] * mult) @ rows`` with ``rows = wt[K]``."""
    if keep.shape[0]:
        out.addmm_(_scaled(a, keep, mult), rows, alpha=_alpha(mult, alpha))
    return out


def kept_input_grad(da, dout, keep, mult, rows, alpha=1.0):
    """``da[:, K] = alpha * mult * (dout @ rows^T)``; the dropped columns are zeroed."""
    da.zero_()
    if keep.shape[0]:
        da_k = torch.addmm(dout.new_empty(dout.shape[0], keep.shape[0]), dout, rows.t(), beta=0,
                           alpha=_alpha(mult, alpha))
        if torch.is_tensor(mult):
            da_k.mul_(mult.to(da_k.dtype))
        da.scatter_(1, keep.expand(da.shape[0], -1), da_k)  # row by row (index_copy_ on dim 1 goes column-wise)
    return da


def kept_rows_grad(a, dout, keep, mult, alpha=1.0):
    """``alpha * (a[:, K] * mult)^T @ dout``: the gradient of ``rows`` (``k x n_out``)."""
    a_k = _scaled(a, keep, mult)
    return torch.addmm(dout.new_empty(a_k.shape[1], dout.shape[1]), a_k.t(), dout, beta=0, alpha=_alpha(mult, alpha))


def add_kept_rows_grad(dwt, a, dout, keep, mult, alpha=1.0):
    """``dwt[K] += alpha * (a[:, K] * mult)^T @ dout``."""
    return add_rows(dwt, keep, kept_rows_grad(a, dout, keep, mult, alpha))


def cell_forward(gates, c_prev, act=None, c=None, tanh_c=None, h=None):
    """One LSTM step from its pre-activations (gate order i, f, g, o; the cell state is never dropped):
    ``act = [sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)]`` (``act`` may be ``gates``: in place),
    ``c = f * c_prev + i * g``, ``tanh_c = tanh(c)``, ``h = o * tanh_c``. Returns ``(act, c, tanh_c, h)``."""
    H = c_prev.shape[1]
    act = torch.empty_like(gates) if act is None else act
    torch.sigmoid(gates[:, : 2 * H], out=act[:, : 2 * H])
    torch.tanh(gates[:, 2 * H: 3 * H], out=act[:, 2 * H: 3 * H])
    torch.sigmoid(gates[:, 3 * H:], out=act[:, 3 * H:])
    i, f, g, o = act.chunk(4, dim=1)
    c = torch.mul(f, c_prev, out=c) if c is not None else torch.mul(f, c_prev)
    c.addcmul_(i, g)
    tanh_c = torch.tanh(c, out=tanh_c) if tanh_c is not None else c.tanh()
    h = torch.mul(o, tanh_c, out=h) if h is not None else o * tanh_c
    return act, c, tanh_c, h


def cell_backward(act, c_prev, tanh_c, dh, dc, dgates=None):
    """Gradients of :func:`cell_forward`: returns ``dgates``; ``dc`` (the gradient reaching ``c``, modified in
    place) becomes the gradient of ``c_prev``. ``dh`` is the gradient reaching ``h``."""
    H = c_prev.shape[1]
    i, f, g, o = act.chunk(4, dim=1)
    dc.addcmul_(dh, torch.addcmul(torch.ones_like(tanh_c), tanh_c, tanh_c, value=-1).mul_(o))
    dgates = torch.empty_like(act) if dgates is None else dgates
    di, df, dg, do = dgates.chunk(4, dim=1)
    torch.mul(dc, g, out=di)
    torch.mul(dc, c_prev, out=df)
    torch.mul(dc, i, out=dg)
    torch.mul(dh, tanh_c, out=do)
    deriv = torch.addcmul(act, act, act, value=-1)  # sigmoid': s (1 - s); the g block is replaced by tanh'
    torch.addcmul(torch.ones_like(g), g, g, value=-1, out=deriv[:, 2 * H: 3 * H])
    dgates.mul_(deriv)
    dc.mul_(f)
    return dgates


# ---- a weight's kept rows, prepared once per call ----------------------------------------------------------
class _KeptRows:
    """The rows of ``wt`` (``n x n_out``) that each set of a packed mask keeps. ``source`` is the one tensor they
    are read from (:func:`_source`: prepared once per call, saved for the backward); immutable."""

    def __init__(self, source, mask: PackedMask, how):
        self.mask, self.source, self._contiguous = mask, source, None
        if how == "strided views":
            self._rows = [source[start::step] for start, step in mask.strides]
        elif how == "slices of one permuted copy":
            self._rows = [source[o:o + k] for o, k in zip(mask.offsets, mask.sizes)]
        elif how == "one gather per call":
            k = mask.width
            self._rows = [source[g * k: g * k + mask.sizes[g]] for g in range(mask.num_sets)]
        else:
            self._rows, self._contiguous = None, source

    @classmethod
    def of(cls, wt, mask, source=None):
        """The kept rows of ``wt``, from ``source`` when it was prepared already."""
        how = layout(mask)
        return cls(_source(wt, mask, how) if source is None else source, mask, how)

    def rows(self, g):
        if self._rows is not None:
            return self._rows[g]
        return kept_rows(self._contiguous, self.mask.kept(g)[0])

    def product(self, out, a, g):
        keep, mult = self.mask.kept(g)
        return kept_product(out, a, keep, mult, self.rows(g))

    def input_grad(self, da, dout, g):
        keep, mult = self.mask.kept(g)
        return kept_input_grad(da, dout, keep, mult, self.rows(g))


def _source(wt, mask, how):
    if how == "strided views":  # regularly strided sets (rbd): views of one transposed copy are BLAS operands
        return wt.contiguous()
    if how == "slices of one permuted copy":
        # windows of one permutation: one permuted copy, extended by the units that wrapping windows read past
        # its end, holds every set's rows as one slice
        extra = max(0, max(o + k for o, k in zip(mask.offsets, mask.sizes)) - mask.n)
        return wt.t().index_select(1, torch.cat([mask.perm, mask.perm[:extra]])).t()
    if how == "one gather per call":  # one pass over the weight gathers every set's rows
        return wt.t().index_select(1, mask.keep.flatten()).t()
    return wt.contiguous()  # a fresh set per use: a contiguous wt makes each gather a block copy of whole rows


def layout(mask):
    """How this backend prepares a weight's kept rows for ``mask`` (the benchmark prints it): a gather is where a
    mode pays for its irregularity."""
    if mask.strides is not None:
        return "strided views"
    if mask.perm is not None:
        return "slices of one permuted copy"
    return "one gather per call" if mask.num_sets <= CACHED_SETS else "a gather per use"


# ---- products over a whole sequence ----------------------------------------------------------------------
def step_order(mask, steps):
    """Storage row of each step in this backend's grouped layout: steps grouped by kept set."""
    if not isinstance(mask, PackedMask):
        return list(range(steps))
    pos, row = [0] * steps, 0
    for group in mask.set_steps:
        for t in group:
            pos[t] = row
            row += 1
    return pos


def _dense(mask):
    return mask.unsqueeze(1) if mask.dim() == 2 else mask


def _groups(mask, B):
    """``(g, steps, r0, r1)``: each set's steps and its rows in a ``[T * B, ...]`` buffer in :func:`step_order`."""
    start = 0
    for g, steps in enumerate(mask.set_steps):
        yield g, steps, start * B, (start + len(steps)) * B
        start += len(steps)


def _steps_of(a, steps):
    """``a[steps]`` (a view when the steps are consecutive)."""
    if steps == tuple(range(steps[0], steps[0] + len(steps))):
        return a[steps[0]: steps[0] + len(steps)]
    return a.index_select(0, torch.tensor(steps, device=a.device))


def _grouped_product(out, a, wt, mask):
    """``out[pos[t]] += mask_t(a[t]) @ wt``, ``pos = step_order(mask)``; ``a`` ``[T, B, n]``, ``out``
    ``[T, B, n_out]``. Returns the kept rows' source tensor (None for dense masks), for the backward."""
    T, B, n = a.shape
    flat = out.view(T * B, -1)
    if not isinstance(mask, PackedMask):
        flat.addmm_((a if mask is None else a * _dense(mask)).reshape(T * B, n), wt)
        return None
    rows = _KeptRows.of(wt, mask)
    for g, steps, r0, r1 in _groups(mask, B):
        rows.product(flat[r0:r1], _steps_of(a, steps).reshape(-1, n), g)
    return rows.source


def _by_columns(wt):
    """Whether ``wt`` is the transpose of a contiguous matrix (``nn.Linear``'s weight, transposed)."""
    return not wt.is_contiguous() and wt.t().is_contiguous()


def _grouped_backward(a, wt, mask, dout, need_input_grad, source=None):
    """Gradients of :func:`_grouped_product` as ``(da or None, dwt)``; ``dout`` in ``mask``'s step order,
    ``source`` what the forward returned."""
    T, B, n = a.shape
    flat = dout.reshape(T * B, -1)
    if not isinstance(mask, PackedMask):
        m = None if mask is None else _dense(mask)
        a_m = (a if m is None else a * m).reshape(T * B, n)
        da = None
        if need_input_grad:
            da = torch.mm(flat, wt.t()).view(T, B, n)
            if m is not None:
                da.mul_(m)
        # in wt's own layout: a gradient laid out otherwise than its weight is copied by autograd (8 MB, 4 ms of
        # a PTB step for the 200 -> 10000 output layer, whose wt is nn.Linear's weight transposed)
        return da, (torch.mm(flat.t(), a_m).t() if _by_columns(wt) else torch.mm(a_m.t(), flat))
    rows = _KeptRows.of(wt, mask, source) if need_input_grad else None
    da = a.new_empty(T, B, n) if need_input_grad else None
    dwt = None
    for g, steps, r0, r1 in _groups(mask, B):
        keep, mult = mask.kept(g)
        d_g = flat[r0:r1]
        a_g = _steps_of(a, steps).reshape(-1, n)
        if mask.num_sets == 1:  # accumulate compactly, scatter once
            dwt = a.new_zeros(wt.shape).index_copy_(0, keep, kept_rows_grad(a_g, d_g, keep, mult))
        else:
            dwt = a.new_zeros(wt.shape) if dwt is None else dwt
            add_rows(dwt, keep, kept_rows_grad(a_g, d_g, keep, mult))
        if need_input_grad:
            if len(steps) == T:  # one set for every step: straight into da
                rows.input_grad(da.view(T * B, n), d_g, g)
            else:
                da_g = rows.input_grad(a.new_empty(r1 - r0, n), d_g, g)
                da.index_copy_(0, torch.tensor(steps, device=a.device), da_g.view(-1, B, n))
    return da, dwt if dwt is not None else a.new_zeros(wt.shape)


def _reorder(x, source, target):
    """``x`` stored in ``source``'s step order (:func:`step_order`; time order for None), in ``target``'s."""
    T = x.shape[0]
    pos, own = step_order(source, T), step_order(target, T)
    if pos == own:
        return x
    order = sorted(range(T), key=own.__getitem__)
    return x.index_select(0, torch.tensor([pos[t] for t in order], device=x.device))


def sequence_product(a, wt, mask, bias=None):
    """``out[t] = mask_t(a[t]) @ wt + bias`` for every step, in time order; ``a`` ``[T, B, n]``. Returns
    ``(out, saved)``: ``saved`` holds the kept rows' source tensor, so that the backward does not prepare it again."""
    T, B, n = a.shape
    if not isinstance(mask, PackedMask):  # one product, the bias added by it (no [T, B, n_out] copy of the bias)
        flat = (a if mask is None else a * _dense(mask)).reshape(T * B, n)
        out = torch.addmm(bias, flat, wt) if bias is not None else torch.mm(flat, wt)
        return out.view(T, B, -1), ()
    out = bias.expand(T, B, -1).clone() if bias is not None else a.new_zeros(T, B, wt.shape[1])
    source = _grouped_product(out, a, wt, mask)
    pos = step_order(mask, T)
    out = out if pos == sorted(pos) else out.index_select(0, torch.tensor(pos, device=out.device))
    return out, (source,)


def sequence_backward(a, wt, mask, dout, need_input_grad=True, saved=(), need_bias_grad=False):
    """Gradients of :func:`sequence_product` as ``(da or None, dwt, db or None)``; ``dout`` in time order."""
    da, dwt = _grouped_backward(a, wt, mask, _reorder(dout.contiguous(), None, mask), need_input_grad,
                                saved[0] if saved else None)
    return da, dwt, bias_grad(dout, need_bias_grad)


def bias_grad(dout, needed):
    """The bias's gradient of a sequence's products (None when not needed)."""
    return dout.sum(dim=(0, 1)) if needed else None


# ---- one LSTM layer and direction ------------------------------------------------------------------------
class Recurrent:
    """The per-step recurrent product ``(r_t * h) @ W_hh^T`` and its input gradient, on the kept units for a packed
    mask, the mask multiplied in for a dense one (``[T, n]`` or ``[T, B, n]``). Shared by the backends, which differ
    in how step ``t``'s kept rows are found: ``kept(t) -> (keep, mult, rows)`` (packed masks only), computed with
    the kept products of ``primitives`` (a backend module)."""

    def __init__(self, wt, mask, kept=None, primitives=None):
        self.wt, self.mask, self.kept = wt, mask, kept
        self.primitives = primitives if primitives is not None else sys.modules[__name__]

    def _dense(self, t, rows):
        m = self.mask[t]
        return m if m.dim() == 1 else m[:rows]

    def product(self, out, h, t):
        """``out += (r_t * h) @ wt`` in place."""
        if self.kept is not None:
            return self.primitives.kept_product(out, h, *self.kept(t))
        return out.addmm_(h if self.mask is None else h * self._dense(t, h.shape[0]), self.wt)

    def input_grad(self, dh, dG, t):
        """``dh = d(h_prev)`` from the gates' gradient ``dG``, in place; dropped units get zero."""
        if self.kept is not None:
            return self.primitives.kept_input_grad(dh, dG, *self.kept(t))
        torch.mm(dG, self.wt.t(), out=dh)
        return dh if self.mask is None else dh.mul_(self._dense(t, dh.shape[0]))


def _recurrent(wt, mask, source=None):
    """This backend's :class:`Recurrent` and the source of its kept rows (saved for the backward): each kept set's
    rows prepared once per call (:class:`_KeptRows`), step ``t`` finding its set on the host."""
    if not isinstance(mask, PackedMask):
        return Recurrent(wt, mask), None
    rows = _KeptRows.of(wt, mask, source)

    def kept(t):
        g = mask.step_sets[t]
        return (*mask.kept(g), rows.rows(g))

    return Recurrent(wt, mask, kept), rows.source


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


def lstm_layer_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, plan):
    """See :mod:`onmt_structdrop.ops`: ``(y, h_n, c_n, saved)``."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    packed = plan.batch_sizes is not None
    pos = step_order(plan.input_mask, T)  # storage row of each step's gates
    gates = x.new_empty(T, B, 4 * H)
    if b_ih is not None:
        gates.copy_((b_ih + b_hh).expand_as(gates))
    else:
        gates.zero_()
    in_source = _grouped_product(gates, x, w_ih.t(), plan.input_mask)
    rec, rec_source = _recurrent(w_hh.t(), plan.recurrent_mask)

    alloc = x.new_zeros if packed else x.new_empty  # padded positions must read as zeros downstream
    y, cells, tanh_cells = alloc(T, B, H), alloc(T, B, H), alloc(T, B, H)
    h, c = (h0.clone(), c0.clone()) if packed else (h0, c0)
    for t in (range(T - 1, -1, -1) if plan.reverse else range(T)):
        a = B if not packed else plan.batch_sizes[t]
        G = gates[pos[t], :a]
        rec.product(G, h[:a], t)
        cell_forward(G, c[:a], act=G, c=cells[t, :a], tanh_c=tanh_cells[t, :a], h=y[t, :a])
        if packed:  # inactive rows keep their state
            h[:a], c[:a] = y[t, :a], cells[t, :a]
        else:
            h, c = y[t], cells[t]
    saved = (gates, y, cells, tanh_cells, in_source, rec_source)
    return y, h.clone() if not packed else h, c.clone() if not packed else c, saved


def lstm_layer_backward(plan, x, h0, c0, w_ih, w_hh, saved, dy, dh_n, dc_n, needs):
    """See :mod:`onmt_structdrop.ops`: ``(dx, dh0, dc0, dw_ih, dw_hh, db)``."""
    gates, y, cells, tanh_cells, in_source, rec_source = saved
    T, B, _ = x.shape
    H = y.shape[2]
    packed = plan.batch_sizes is not None
    pos = step_order(plan.input_mask, T)
    lengths = _lengths(plan.batch_sizes, B) if packed else None
    c_prev = _previous(cells, c0, plan.reverse, lengths)
    rec, _ = _recurrent(w_hh.t(), plan.recurrent_mask, rec_source)

    dh = dh_n.clone() if dh_n is not None else x.new_zeros(B, H)
    dc = dc_n.clone() if dc_n is not None else x.new_zeros(B, H)
    dgates = x.new_zeros(T, B, 4 * H) if packed else x.new_empty(T, B, 4 * H)
    for t in (range(T) if plan.reverse else range(T - 1, -1, -1)):
        a = B if not packed else plan.batch_sizes[t]
        dh_a = dh[:a]
        if dy is not None:
            dh_a.add_(dy[t, :a])
        dG = cell_backward(gates[pos[t], :a], c_prev[t, :a], tanh_cells[t, :a], dh_a, dc[:a],
                           dgates=dgates[pos[t], :a])
        rec.input_grad(dh_a, dG, t)

    need_x, need_h0, need_c0, need_bias = needs
    dx, dw_ih_t = _grouped_backward(x, w_ih.t(), plan.input_mask, dgates, need_x, in_source)
    h_prev = _previous(y, h0, plan.reverse, lengths)
    _, dw_hh_t = _grouped_backward(h_prev, w_hh.t(), plan.recurrent_mask,
                                   _reorder(dgates, plan.input_mask, plan.recurrent_mask), False)
    db = dgates.sum(dim=(0, 1)) if need_bias else None
    return dx, dh if need_h0 else None, dc if need_c0 else None, dw_ih_t.t(), dw_hh_t.t(), db


"""The kernel seam: the operations structured dropout computes with, and the one place that picks a backend.

Backends (``torch``, ``native``, ``cupy``) are modules side by side in this package, each with the functions
below under the same names and meanings, and three more: ``available() -> (bool, reason)``,
``declines(op, device, dtype, plan) -> reason or None`` and ``compaction_pays(op, plan) -> bool`` (whether its
products on the kept units beat the dense ones for this plan: the thresholds it measured live there, with the
figures behind them). The callers ask one question, :func:`choose`: which backend serves an operation, and in
which form its masks are computed with (packed, the dropped units' work skipped, where that pays on the backend
that serves; dense, multiplied in, the same result, where it does not). It asks the backends in the order
``cupy``, ``native``, ``torch``; the first that is available and does not decline serves (``torch`` serves
everything). ``ONMT_STRUCTDROP_BACKEND=torch|native|cupy`` puts one first (``with ops.preferred(name):`` does so
for a block); forcing a backend that is not available is an error that says why. :func:`serving` lists the
backends of a device (the benchmarks time each).

The operations (``OPS``): ``primitives`` (one step's products and cell, for step-by-step loops), ``sequence`` (a
masked product of a whole time-major sequence), ``lstm_layer`` (a layer and direction), and ``rows`` (a product
over the rows of a batch-major ``[B * T, n]`` block whose steps' kept sets interleave, as a decoder's generator
reads its output: a question only, answered by ``compaction_pays``; where it pays, the caller runs the rows as one
``sequence`` product of a one-step mask).

Masks (:mod:`.packed`). A structured mask is a :class:`~.packed.PackedMask`: kept units ``K`` and multipliers
``s`` per kept set, and each step's set. A dense mask (``compact=False``, ``bernoulli``) is a ``[T, n]`` or
``[T, B, n]`` tensor multiplied in (the masked-dense path); ``None`` is no dropout. A backend may decline dense
masks; ``torch`` serves them.

Primitives (no autograd; ``a`` is ``M x n``, ``dout`` ``M x n_out``; ``keep`` a 1-D index tensor ``K``;
``mult`` the kept units' multipliers, a tensor over ``K`` or a float; ``rows = kept_rows(wt, K)`` is ``wt[K]``
for a weight ``wt`` stored ``n x n_out``, i.e. ``W^T``):

    kept_rows(wt, keep) -> rows                   wt[K], in whatever form the products below read
    add_rows(dwt, keep, drows)                    dwt[K] += drows            (only kept rows are touched)
    kept_product(out, a, keep, mult, rows, alpha)     out += alpha * (a[:, K] * mult) @ rows
    kept_input_grad(da, dout, keep, mult, rows, alpha) da[:, K] = alpha * mult * (dout @ rows^T);
                                                  every dropped column of ``da`` is set to zero
    kept_rows_grad(a, dout, keep, mult, alpha) -> drows = alpha * (a[:, K] * mult)^T @ dout
    add_kept_rows_grad(dwt, a, dout, keep, mult, alpha) -> dwt    dwt[K] += the same (only kept rows touched)
    cell_forward(gates, c_prev, act, c, tanh_c, h) -> (act, c, tanh_c, h)
        act = [sigmoid(i), sigmoid(f), tanh(g), sigmoid(o)] of gates (gate order i, f, g, o; act may be gates),
        c = f * c_prev + i * g, tanh_c = tanh(c), h = o * tanh_c; outputs are allocated when None
    cell_backward(act, c_prev, tanh_c, dh, dc, dgates) -> dgates
        the gradients of the gates; dc (the gradient reaching c) is overwritten with that of c_prev

Sequences (``a`` ``[T, B, n]``, ``out`` ``[T, B, n_out]``, time order, any mask form; the dense-masked forms
multiply the mask in):

    sequence_product(a, wt, mask, bias) -> (out, saved)    out[t] = mask_t(a[t]) @ wt + bias   (bias may be None)
    sequence_backward(a, wt, mask, dout, need_input_grad, saved, need_bias_grad) -> (da or None, dwt, db or None)

``saved`` (a tuple of tensors, possibly empty) is what the backward may reuse of the forward's work. ``dwt`` comes
stored as ``wt`` is where the mask is dense or the backend is native (``wt`` the transpose of a contiguous weight:
``dwt.t()`` contiguous), so that autograd does not copy it into the weight's layout.

The whole layer (one LSTM layer and direction over a sequence; the time loops run inside the backend):

    lstm_layer_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, plan) -> (y, h_n, c_n, saved)
    lstm_layer_backward(plan, x, h0, c0, w_ih, w_hh, saved, dy, dh_n, dc_n, needs)
        -> (dx, dh0, dc0, dw_ih, dw_hh, db)

``plan`` is a :class:`LayerPlan`. ``saved`` is a tuple of tensors (or None), all the backward needs besides
the inputs; nothing else is kept between the two. ``needs`` says which of ``dx, dh0, dc0, db`` to compute.
Equations: ``G_t = (m_t * x_t) W_ih^T + b_ih + (r_t * h_prev) W_hh^T + b_hh`` then the cell; ``h_prev`` is
h(t-1) forward and h(t+1) in reverse; the cell state is never dropped. With ``batch_sizes`` (sequences sorted
by decreasing length) ``batch_sizes[t]`` rows are active at step ``t``; inactive rows keep their state and their
outputs are zero.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import logging
import os
from dataclasses import dataclass
from typing import Optional, Tuple

from .packed import Mask, PackedMask, device_generator, draw_time, pack, prepare  # noqa: F401

BACKENDS = ("cupy", "native", "torch")
ENV = "ONMT_STRUCTDROP_BACKEND"
HOST_MASKS_ENV = "ONMT_STRUCTDROP_HOST_MASKS"
OPS = ("primitives", "sequence", "lstm_layer", "rows")
CACHED_SETS = 8  # a mask with at most this many kept sets gets each set's kept rows prepared once per call
logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class LayerPlan:
    """What one layer and direction computes with besides its tensors: its masks (``None``, a
    :class:`PackedMask` or a dense tensor), the active rows per step of packed input, and the direction."""

    input_mask: Mask
    recurrent_mask: Mask
    batch_sizes: Optional[Tuple[int, ...]]
    reverse: bool


class BackendUnavailable(RuntimeError):
    pass


@functools.lru_cache(maxsize=None)
def get(name):
    """The backend module ``name``."""
    if name not in BACKENDS:
        raise ValueError(f"{ENV} must be one of {', '.join(BACKENDS)}; got {name!r}")
    return importlib.import_module(f"{__name__}.{name}_backend")


@functools.lru_cache(maxsize=None)
def availability(name):
    """``(available, reason)`` of backend ``name``, asked once per process."""
    ok, reason = get(name).available()
    if not ok:
        logger.info("onmt_structdrop: the %s backend is not available: %s", name, reason)
    return ok, reason


_preferred = []  # the stack of :func:`preferred` blocks


@contextlib.contextmanager
def preferred(name):
    """``with ops.preferred("torch"): ...`` puts backend ``name`` first for the forward calls inside the block,
    as ``ONMT_STRUCTDROP_BACKEND`` does for the whole process (a backward runs on the backend its forward used)."""
    get(name)  # checks the name
    _preferred.append(name)
    try:
        yield
    finally:
        _preferred.pop()


def env_flag(name, default):
    """A switch read from the environment variable ``name``: 1/on/true/yes or 0/off/false/no in any case, unset or
    empty for ``default``; any other word is an error naming the variable (never taken for "on")."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "on", "true", "yes"):
        return True
    if value in ("0", "off", "false", "no"):
        return False
    raise ValueError(f"{name}={os.environ[name]!r} is not a switch: set it to 1/on/true/yes or 0/off/false/no")


_host_masks = []  # the stack of :func:`masks_on_host` blocks


@contextlib.contextmanager
def masks_on_host():
    """``with ops.masks_on_host(): ...`` draws every mask on the host inside the block, as
    ``ONMT_STRUCTDROP_HOST_MASKS=1`` does for the process (a benchmark times the two side by side)."""
    _host_masks.append(True)
    try:
        yield
    finally:
        _host_masks.pop()


def draws_masks_on(device):
    """Whether ``time`` masks for tensors on ``device`` are drawn there (:func:`draw_time`): on a GPU, so that a
    training step neither waits for the host's draws nor uploads them; ``ONMT_STRUCTDROP_HOST_MASKS=1`` draws on
    the host everywhere (the same seed then gives the same masks on every device)."""
    import torch
    return torch.device(device).type == "cuda" and not _host_masks and not env_flag(HOST_MASKS_ENV, False)


def draws_own_masks(mode, compact, device):
    """Whether masks of ``mode`` for tensors on ``device`` are drawn there, packed (:func:`draw_time`): compacted
    ``time`` masks where the device draws its own (:func:`draws_masks_on`); a dense mask (``compact`` off) is the
    host's."""
    return mode == "time" and compact and draws_masks_on(device)


def check_environment():
    """The package's environment variables, checked where a command starts: a ValueError naming the first bad one
    (an unknown or unavailable backend, a switch that is not one), so that it never surfaces at the first step."""
    try:
        forced()
    except BackendUnavailable as err:
        raise ValueError(str(err)) from None
    from . import cuda_graphs
    cuda_graphs.enabled()
    env_flag(HOST_MASKS_ENV, False)
    get("cupy").settings()


def forced():
    """The backend a :func:`preferred` block or ``ONMT_STRUCTDROP_BACKEND`` names (in any case), or None."""
    name = _preferred[-1] if _preferred else os.environ.get(ENV, "").strip().lower()
    if not name:
        return None
    get(name)  # checks the name
    ok, reason = availability(name)
    if not ok:
        source = f"ops.preferred({name!r})" if _preferred else f"{ENV}={name}"
        raise BackendUnavailable(f"{source}, but the {name} backend is not available: {reason}")
    return name


def select(op, tensor, plan=None):
    """The backend that serves ``op`` (one of ``OPS``) on ``tensor``'s device and dtype with ``plan``."""
    first = forced()
    order = ((first,) if first else ()) + tuple(b for b in BACKENDS if b != first)
    for name in order:
        if not availability(name)[0]:
            continue
        backend = get(name)
        reason = backend.declines(op, tensor.device, tensor.dtype, plan)
        if reason is None:
            return backend
        if name == first:
            _log_decline(name, op, reason)
    raise BackendUnavailable(f"no backend serves {op} on {tensor.device} {tensor.dtype}")  # torch serves all


@dataclass(frozen=True)
class Choice:
    """The seam's answer for one call (:func:`choose`): the backend that serves it, the plan in the form that
    backend computes with (for ``sequence`` and ``rows`` the mask itself, for ``lstm_layer`` a :class:`LayerPlan`),
    and whether that form skips the dropped units' work (some mask is packed)."""

    backend: object
    plan: object
    compact: bool

    @property
    def name(self):
        return self.backend.NAME


_always_compact = []  # the stack of :func:`always_compact` blocks


@contextlib.contextmanager
def always_compact():
    """``with ops.always_compact(): ...`` keeps packed masks packed whether or not compacting pays on the serving
    backend (tests of every compacted path, benchmarks of them)."""
    _always_compact.append(True)
    try:
        yield
    finally:
        _always_compact.pop()


def _masks(op, plan):
    return (plan.input_mask, plan.recurrent_mask) if op == "lstm_layer" and plan is not None else (plan,)


def _dense_plan(op, plan, dtype):
    """``plan`` with its packed masks made dense (multiplied in: the same result)."""
    dense = lambda m: m.dense(dtype) if isinstance(m, PackedMask) else m  # noqa: E731
    if op == "lstm_layer":
        return dataclasses.replace(plan, input_mask=dense(plan.input_mask), recurrent_mask=dense(plan.recurrent_mask))
    return dense(plan)


def choose(op, tensor, plan=None) -> Choice:
    """Which backend serves ``op`` (one of ``OPS``) on ``tensor``'s device and dtype with ``plan``, and in which
    form: packed masks stay packed where the serving backend's ``compaction_pays``, else they are made dense and
    the backend that serves the dense form is chosen. A caller asks once per call and reports what was chosen."""
    backend = select(op, tensor, plan)
    packed = any(isinstance(m, PackedMask) for m in _masks(op, plan))
    if packed and not _always_compact and not backend.compaction_pays(op, plan):
        plan, packed = _dense_plan(op, plan, tensor.dtype), False
        backend = select(op, tensor, plan)
    return Choice(backend, plan, packed)


def plain():
    """The backend a plain product belongs to (no mask, or ``F.linear`` of an input the mask was multiplied into):
    torch's own operations, whatever the device."""
    return get("torch")


def serving(device, dtype=None):
    """The names of the backends that are available and serve ``device`` (and ``dtype``, float32 when None), in
    the order the dispatch asks them."""
    import torch
    device = torch.device(device)
    return [name for name in BACKENDS if availability(name)[0]
            and get(name).declines("primitives", device, dtype or torch.float32) is None]


@functools.lru_cache(maxsize=64)
def _log_decline(name, op, reason):
    logger.info("onmt_structdrop: the forced %s backend declines %s (%s); the next backend serves it", name, op,
                reason)

"""CUDA graphs of the cupy backend's layer loops: a layer's forward (or backward) is captured once per shape, at
that shape's second call, and then replayed, so that its per-step kernel launches cost one graph launch.

A capture bakes in every pointer and every host value it saw. So the tensors a call reads (inputs, the masks'
kept units and multipliers or dense values, what the forward saved) are copied into the graph's static buffers
before each replay, the host values (shapes, scales, which weights) are the graph's key, and the results are
copied out of the graph's memory, so that a later replay cannot overwrite what autograd still holds. The loops
pick each step's kept set on the device, so the grouping of steps into sets is not a host value of the capture.
``ONMT_STRUCTDROP_CUDA_GRAPHS=0`` runs the loops eagerly instead.
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict

import torch

from . import env_flag
from .packed import PackedMask

ENV = "ONMT_STRUCTDROP_CUDA_GRAPHS"
MAX_GRAPHS = 32  # per cache; the least recently replayed graph goes first
MAX_SEEN = 256  # keys seen once, remembered so that their second call captures


def enabled():
    return env_flag(ENV, True)


class CudaGraph:
    """A ``torch.cuda.CUDAGraph`` of ``fn``, after one run on a side stream (which compiles the kernels and sets up
    cuBLAS outside the capture)."""

    def capture(self, fn):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            return fn()

    def replay(self):
        self.graph.replay()


def mask_key(mask):
    """The host values a capture bakes in for ``mask`` (None, a packed mask or a dense one). The layer loops pick
    each step's kept set on the device (``cupy_backend.per_step``), so the grouping of steps into sets and the
    sets' sizes are not among them: one graph serves every draw of a mode whose tensors keep their shapes."""
    if mask is None:
        return None
    if not isinstance(mask, PackedMask):  # a dense mask: a tensor, copied in
        return "dense"
    return (mask.n, mask.values is None, mask.scale)


def mask_tensors(mask):
    if mask is None:
        return ()
    if not isinstance(mask, PackedMask):
        return (mask,)
    return (mask.keep, mask.values, mask.step_set, mask.perm)


def on_static(mask, tensors):
    """``mask`` reading its tensors from ``tensors`` (the static copies of :func:`mask_tensors`)."""
    if mask is None:
        return None
    if not isinstance(mask, PackedMask):
        return tensors[0]
    keep, values, step_set, perm = tensors
    return dataclasses.replace(mask, keep=keep, values=values, step_set=step_set, perm=perm)


def tensor_key(t):
    return None if t is None else (tuple(t.shape), t.dtype, t.device)


class GraphCache:
    """Graphs by key. :meth:`run` computes ``fn(*tensors)`` (a flat tuple of tensors or None): the first call of
    a key eagerly, and from its second call on by replaying the graph captured then, ``tensors`` copied into its
    static buffers; it returns copies of the graph's results. A key that never comes back (a mask whose shapes
    change with every draw, as ``rbd`` widths do) so never pays for a capture."""

    def __init__(self, make_graph=CudaGraph):
        self.make_graph, self.graphs, self.seen, self.captures = make_graph, OrderedDict(), OrderedDict(), 0

    def run(self, key, fn, tensors):
        entry = self.graphs.get(key)
        if entry is None:
            if key not in self.seen:
                self.seen[key] = None
                while len(self.seen) > MAX_SEEN:
                    self.seen.popitem(last=False)
                return fn(*tensors)
            del self.seen[key]
            static = [None if t is None else t.clone() for t in tensors]
            graph = self.make_graph()
            outputs = graph.capture(lambda: fn(*static))
            entry = self.graphs[key] = (graph, static, outputs)
            self.captures += 1
            while len(self.graphs) > MAX_GRAPHS:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(key)
        graph, static, outputs = entry
        for buffer, t in zip(static, tensors):
            if t is not None:
                buffer.copy_(t)
        graph.replay()
        return tuple(None if out is None else out.clone() for out in outputs)


def layer_key(kind, plan, tensors, extra=()):
    return (kind, plan.reverse, plan.batch_sizes, mask_key(plan.input_mask), mask_key(plan.recurrent_mask),
            tuple(map(tensor_key, tensors)), *extra)


def graphed_layer_forward(cache, forward, x, h0, c0, w_ih, w_hh, b_ih, b_hh, plan):
    """``forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, plan) -> (y, h_n, c_n, saved)`` through ``cache``."""
    masks = (plan.input_mask, plan.recurrent_mask)
    inputs = (x, h0, c0, *mask_tensors(masks[0]), *mask_tensors(masks[1]))
    weights = (w_ih, w_hh, b_ih, b_hh)  # read in place: their storage is part of the key

    def fn(x, h0, c0, *mask_parts):
        split = len(mask_tensors(masks[0]))
        static_plan = dataclasses.replace(plan, input_mask=on_static(masks[0], mask_parts[:split]),
                                          recurrent_mask=on_static(masks[1], mask_parts[split:]))
        y, h_n, c_n, saved = forward(x, h0, c0, *weights, static_plan)
        return (y, h_n, c_n, *saved)

    key = layer_key("forward", plan, inputs, tuple(None if w is None else w.data_ptr() for w in weights))
    y, h_n, c_n, *saved = cache.run(key, fn, inputs)
    return y, h_n, c_n, tuple(saved)


def graphed_layer_backward(cache, backward, plan, x, h0, c0, w_ih, w_hh, saved, dy, dh_n, dc_n, needs):
    """``backward(plan, x, h0, c0, w_ih, w_hh, saved, dy, dh_n, dc_n, needs)`` through ``cache``."""
    masks = (plan.input_mask, plan.recurrent_mask)
    inputs = (x, h0, c0, dy, dh_n, dc_n, *saved, *mask_tensors(masks[0]), *mask_tensors(masks[1]))
    n_saved, split = len(saved), len(mask_tensors(masks[0]))

    def fn(x, h0, c0, dy, dh_n, dc_n, *rest):
        saved_static, mask_parts = rest[:n_saved], rest[n_saved:]
        static_plan = dataclasses.replace(plan, input_mask=on_static(masks[0], mask_parts[:split]),
                                          recurrent_mask=on_static(masks[1], mask_parts[split:]))
        return backward(static_plan, x, h0, c0, w_ih, w_hh, tuple(saved_static), dy, dh_n, dc_n, needs)

    key = layer_key("backward", plan, inputs, (w_ih.data_ptr(), w_hh.data_ptr(), tuple(needs)))
    return cache.run(key, fn, inputs)


def uses_graphs(plan):
    """Whether a layer call with ``plan`` runs through graphs (padded sequences)."""
    return enabled() and plan.batch_sizes is None

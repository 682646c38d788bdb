"""CUDA graphs of the cupy backend's layer loops: a layer's forward (or backward) is captured once per shape and
mask structure and then replayed, so that its per-step kernel launches cost one graph launch.

A capture bakes in every pointer and every host value it saw. So the tensors a call reads (inputs, the masks'
kept units and multipliers, what the forward saved) are copied into the graph's static buffers before each replay,
the host values (shapes, each step's kept set, set sizes, scales, which weights) are the graph's key, and the
results are copied out of the graph's memory, so that a later replay cannot overwrite what autograd still holds.
``ONMT_STRUCTDROP_CUDA_GRAPHS=0`` runs the loops eagerly instead.
"""
from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict

import torch

from .packed import PackedMask

ENV = "ONMT_STRUCTDROP_CUDA_GRAPHS"
MAX_GRAPHS = 32  # per cache; the least recently replayed graph goes first


def enabled():
    return os.environ.get(ENV, "1") != "0"


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


class RerunGraph:
    """What a replay computes, without CUDA: ``fn`` run again on the static buffers, its results copied into the
    captured outputs (a capture that read a host value of another call would show here too)."""

    def capture(self, fn):
        self.fn = fn
        self.outputs = fn()
        return self.outputs

    def replay(self):
        for out, new in zip(self.outputs, self.fn()):
            if out is not None:
                out.copy_(new)


def mask_key(mask):
    """The host values a capture bakes in for ``mask`` (None, or a packed mask)."""
    if mask is None:
        return None
    return (mask.n, tuple(mask.keep.shape), mask.values is None, mask.scale, mask.step_sets, mask.sizes,
            mask.perm is None, mask.offsets, mask.strides)


def mask_tensors(mask):
    return () if mask is None else (mask.keep, mask.values, mask.step_set, mask.perm)


def on_static(mask, tensors):
    """``mask`` reading its tensors from ``tensors`` (the static copies of :func:`mask_tensors`)."""
    if mask is None:
        return None
    keep, values, step_set, perm = tensors
    return dataclasses.replace(mask, keep=keep, values=values, step_set=step_set, perm=perm)


def tensor_key(t):
    return None if t is None else (tuple(t.shape), t.dtype, t.device)


class GraphCache:
    """Graphs by key. :meth:`run` replays ``fn(*tensors)`` (a flat tuple of tensors or None) from the graph
    captured for ``key`` with ``tensors`` copied into its static buffers; it returns copies of the results."""

    def __init__(self, make_graph=CudaGraph):
        self.make_graph, self.graphs, self.captures = make_graph, OrderedDict(), 0

    def run(self, key, fn, tensors):
        entry = self.graphs.get(key)
        if entry is None:
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
    """Whether a layer call with ``plan`` runs through graphs (packed or no masks, padded sequences)."""
    return enabled() and plan.batch_sizes is None and all(
        m is None or isinstance(m, PackedMask) for m in (plan.input_mask, plan.recurrent_mask))

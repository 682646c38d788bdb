"""Checks at the modules' boundary: the masks and generators a user hands in, made once on the host before any
kernel sees them, and the function transforms a training forward cannot serve.

A kept index past the width would be read out of bounds by the native engine, a duplicated one counted twice
by a compacted product, a mask with too few steps would leave steps undropped: each is an error here, naming
the mask and the bad value, never a crash or a silently wrong result later.
"""
from __future__ import annotations

import math

import torch

from .masks import StructuredMask


def check_generator(generator):
    """``None`` or a CPU ``torch.Generator`` (masks are drawn on the host, whatever the device)."""
    if generator is None:
        return None
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator (masks are drawn on the host), got one on "
                         f"{generator.device}")
    return generator


def check_no_transform(x, module):
    """Refuse a training forward with dropout under ``torch.jit.trace`` (the trace would record this call's masks,
    drawn on the host, and replay them at every later call) or ``torch.func.vmap`` (a mask is shared by the batch,
    which vmap splits)."""
    if torch.jit.is_tracing():
        raise RuntimeError(f"{module}: torch.jit.trace of a training forward with dropout would replay this call's "
                           f"masks at every call; trace the module in eval() (or with dropout 0)")
    if torch._C._functorch.is_batchedtensor(x):
        raise RuntimeError(f"{module}: a training forward with dropout does not run under torch.func.vmap (its masks "
                           f"are shared by the whole batch); put the mapped dimension into the batch, or use eval()")


def check_mask(mask, name, steps, n, batch=None):
    """``mask`` as the computation takes it, checked for ``steps`` positions of ``n`` units (of ``batch`` rows):
    ``None``; a :class:`StructuredMask` (returned with its index tensors on the host); or a ``[steps, n]`` /
    ``[steps, batch, n]`` tensor of finite non-negative numbers. Anything else raises, naming ``name``."""
    if mask is None:
        return None
    if isinstance(mask, StructuredMask):
        return _check_structured(mask, name, steps, n)
    if not torch.is_tensor(mask):
        raise TypeError(f"{name} must be None, a StructuredMask or a tensor, got {type(mask).__name__}")
    shapes = [(steps, n)] + ([(steps, batch, n)] if batch is not None else [])
    if tuple(mask.shape) not in shapes:
        raise ValueError(f"{name} must have shape {' or '.join(map(str, shapes))}, got {tuple(mask.shape)}")
    if not mask.is_floating_point() or not torch.isfinite(mask).all() or (mask < 0).any():
        raise ValueError(f"{name} must hold finite non-negative floats (0 drops a unit, a positive value "
                         f"keeps it, scaled by that value); got dtype {mask.dtype}"
                         + ("" if not mask.is_floating_point() else f", values from {mask.min().item()} to "
                                                                     f"{mask.max().item()}"))
    return mask


def _indices(value, name, what):
    """A 1-D integer tensor as a host ``long`` tensor."""
    if not torch.is_tensor(value) or value.dim() != 1 or value.is_floating_point() or value.is_complex() \
            or value.dtype == torch.bool:
        got = f"{value.dtype} of shape {tuple(value.shape)}" if torch.is_tensor(value) else type(value).__name__
        raise ValueError(f"{name}: {what} must be a 1-D integer tensor, got {got}")
    return value.detach().to("cpu", torch.long)


def _check_structured(mask, name, steps, n):
    if mask.n != n:
        raise ValueError(f"{name} covers {mask.n} units, the layer's input has {n}")
    if mask.steps != steps:
        raise ValueError(f"{name} covers {mask.steps} steps, the sequence has {steps}")
    if not isinstance(mask.keep, (list, tuple)) or not isinstance(mask.group_steps, (list, tuple)) \
            or len(mask.keep) != len(mask.group_steps) or not mask.keep:
        raise ValueError(f"{name}: keep and group_steps must be lists of one tensor per kept set, of the same "
                         f"length (at least one)")
    keep = []
    for g, kept in enumerate(mask.keep):
        kept = _indices(kept, name, f"keep[{g}]")
        if len(kept) and (kept.min() < 0 or kept.max() >= n):
            bad = kept[(kept < 0) | (kept >= n)][0].item()
            raise ValueError(f"{name}: keep[{g}] holds unit {bad}, outside [0, {n})")
        if len(kept.unique()) != len(kept):
            raise ValueError(f"{name}: keep[{g}] lists a unit more than once")
        keep.append(kept)
    group_steps, step_group = [], [-1] * steps
    for g, ts in enumerate(mask.group_steps):
        ts = _indices(ts, name, f"group_steps[{g}]")
        if not len(ts):
            raise ValueError(f"{name}: group_steps[{g}] is empty (every kept set serves one step at least)")
        for t in ts.tolist():
            if not 0 <= t < steps:
                raise ValueError(f"{name}: group_steps[{g}] holds step {t}, outside [0, {steps})")
            if step_group[t] != -1:
                raise ValueError(f"{name}: step {t} is in kept sets {step_group[t]} and {g}")
            step_group[t] = g
        group_steps.append(ts)
    if -1 in step_group:
        raise ValueError(f"{name}: step {step_group.index(-1)} is in no kept set (group_steps must cover "
                         f"every step once)")
    if mask.step_group and list(mask.step_group) != step_group:
        raise ValueError(f"{name}: step_group disagrees with group_steps")
    if isinstance(mask.scale, bool) or not isinstance(mask.scale, (int, float)) or not math.isfinite(mask.scale) \
            or mask.scale < 0:
        raise ValueError(f"{name}: scale must be a finite number >= 0, got {mask.scale!r}")
    values = None if mask.values is None else _check_values(mask.values, keep, name)
    perm = offsets = None
    if mask.perm is not None or mask.offsets is not None:
        perm, offsets = _check_windows(mask, keep, name, n)
    if mask.strides is not None:
        _check_strides(mask.strides, keep, name, n)
    return StructuredMask(n, steps, keep, group_steps, float(mask.scale), values, perm, offsets, step_group,
                          None if mask.strides is None else [tuple(s) for s in mask.strides])


def _check_values(values, keep, name):
    if not isinstance(values, (list, tuple)) or len(values) != len(keep):
        raise ValueError(f"{name}: values must be a list of one tensor per kept set")
    out = []
    for g, (v, kept) in enumerate(zip(values, keep)):
        if not torch.is_tensor(v) or not v.is_floating_point() or tuple(v.shape) != (len(kept),):
            got = f"{v.dtype} of shape {tuple(v.shape)}" if torch.is_tensor(v) else type(v).__name__
            raise ValueError(f"{name}: values[{g}] must be a float tensor of shape ({len(kept)},), got {got}")
        v = v.detach().cpu()
        if not torch.isfinite(v).all() or (v < 0).any():
            raise ValueError(f"{name}: values[{g}] must be finite and >= 0")
        out.append(v)
    return out


def _check_windows(mask, keep, name, n):
    """``perm`` and ``offsets`` say every set is a cyclic window of one permutation: a backend may read the sets
    from ``perm``, so they must say what ``keep`` says."""
    if mask.perm is None or mask.offsets is None or len(mask.offsets) != len(keep):
        raise ValueError(f"{name}: perm and offsets go together (one offset per kept set)")
    perm = _indices(mask.perm, name, "perm")
    if len(perm) != n or not torch.equal(perm.sort().values, torch.arange(n)):
        raise ValueError(f"{name}: perm must be a permutation of the {n} units")
    twice = perm.repeat(2)
    for g, (offset, kept) in enumerate(zip(mask.offsets, keep)):
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < n \
                or not torch.equal(twice[offset:offset + len(kept)], kept):
            raise ValueError(f"{name}: keep[{g}] is not the window of perm at offset {offset!r}")
    return perm, list(mask.offsets)


def _check_strides(strides, keep, name, n):
    if not isinstance(strides, (list, tuple)) or len(strides) != len(keep):
        raise ValueError(f"{name}: strides must hold one (start, step) per kept set")
    for g, (stride, kept) in enumerate(zip(strides, keep)):
        ok = isinstance(stride, (list, tuple)) and len(stride) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in stride) and stride[1] >= 1 and stride[0] >= 0
        if not ok or not torch.equal(torch.arange(stride[0], max(stride[0], n), stride[1]), kept):
            raise ValueError(f"{name}: keep[{g}] is not arange(start, {n}, step) for strides[{g}] = {stride!r}")

"""Masks in the form the operations compute with.

A sampled :class:`~onmt_structdrop.masks.StructuredMask` lives on the host. Before a forward call it is packed
once into a :class:`PackedMask`: its tensors built on the host and copied to the device in one transfer, its
planning data (which steps share a kept set, how large each set is, the layout of the sets) kept on the host as
plain Python values taken at sampling time, never read back from a device tensor. On a GPU a ``time`` mask is
drawn there directly in its packed form (:func:`draw_time`). Dense masks (``compact=False`` and ``bernoulli``)
stay plain ``[T, n]`` / ``[T, B, n]`` tensors and take the masked-dense path.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch

from ..masks import StructuredMask, kept_count, mask_from_dense


@dataclass(frozen=True, eq=False)
class PackedMask:
    """Kept units per step, the same for every row of the batch, as device tensors.

    ``keep[g, :sizes[g]]`` are the kept units of set ``g`` (``[G, k]``, ``k = max(sizes)``); a row shorter than
    ``k`` is padded with units the set drops, whose ``values`` are 0, so that the fixed-width form is exact too.
    ``values[g, j]`` multiplies unit ``keep[g, j]`` (``None``: every kept unit is multiplied by ``scale``).
    ``step_set[t]`` is the set of step ``t``.

    Host-side planning data: ``step_sets`` (the same map as a tuple), ``set_steps`` (the steps of each set, in
    time order), ``sizes``; and layout facts a backend may exploit: ``windows`` (every set is a cyclic window
    ``cat([perm, perm])[offsets[g]:offsets[g] + sizes[g]]`` of the permutation ``perm``, a device tensor) and
    ``strides`` (set ``g`` is ``arange(start, n, step)``).
    """

    n: int
    keep: torch.Tensor
    values: Optional[torch.Tensor]
    scale: float
    step_set: torch.Tensor
    step_sets: Tuple[int, ...]
    set_steps: Tuple[Tuple[int, ...], ...]
    sizes: Tuple[int, ...]
    perm: Optional[torch.Tensor] = None
    offsets: Optional[Tuple[int, ...]] = None
    strides: Optional[Tuple[Tuple[int, int], ...]] = None

    @property
    def steps(self):
        return len(self.step_sets)

    @property
    def num_sets(self):
        return len(self.sizes)

    @property
    def width(self):
        """``k``: the fixed width of ``keep``."""
        return self.keep.shape[1]

    def kept(self, g):
        """``(units, multipliers)`` of set ``g`` without padding: an index tensor and a tensor or the float scale."""
        size = self.sizes[g]
        units = self.keep[g] if size == self.width else self.keep[g, :size]
        if self.values is None:
            return units, self.scale
        return units, self.values[g] if size == self.width else self.values[g, :size]

    def one_step(self):
        """A one-step mask of this mask's only set (``batch`` mode): the product of all steps at once."""
        if self.num_sets != 1:
            raise ValueError(f"one_step needs a mask with one kept set, this one has {self.num_sets}")
        return PackedMask(self.n, self.keep, self.values, self.scale, self.step_set[:1], (0,), ((0,),),
                          self.sizes, self.perm, self.offsets, self.strides)

    def unscaled(self):
        """The same kept units with multiplier 1 (0 on padding): for inputs that already carry the mask."""
        values = None if self.values is None else (self.values != 0).to(self.values.dtype)
        return PackedMask(self.n, self.keep, values, 1.0, self.step_set, self.step_sets, self.set_steps,
                          self.sizes, self.perm, self.offsets, self.strides)

    def dense(self, dtype=None):
        """The ``[T, n]`` mask: the multiplier for kept units, 0 for dropped ones."""
        dtype = dtype or (self.values.dtype if self.values is not None else torch.float32)
        per_set = torch.zeros(self.num_sets, self.n, dtype=dtype, device=self.keep.device)
        src = (self.values.to(dtype) if self.values is not None
               else torch.full(self.keep.shape, self.scale, dtype=dtype, device=self.keep.device))
        per_set.scatter_(1, self.keep, src)  # padding carries 0 onto a dropped unit: harmless
        return per_set.index_select(0, self.step_set)


def _upload(parts, device):
    """Move host tensors to ``device`` in one copy: their bytes laid end to end (8-byte aligned), then viewed."""
    if torch.device(device).type == "cpu":
        return parts
    chunks, spans, offset = [], [], 0
    for part in parts:
        raw = part.contiguous().view(-1).view(torch.uint8)
        pad = (-raw.numel()) % 8
        chunks += [raw, torch.zeros(pad, dtype=torch.uint8)]
        spans.append((offset, raw.numel(), part))
        offset += raw.numel() + pad
    buffer = torch.cat(chunks).to(device, non_blocking=True)
    return [buffer[o:o + size].view(part.dtype).view(part.shape) for o, size, part in spans]


def pack(mask: StructuredMask, device=None, dtype=torch.float32) -> PackedMask:
    """A :class:`PackedMask` of ``mask`` on ``device``, values in ``dtype``."""
    sizes = tuple(len(kept) for kept in mask.keep)
    k = max(sizes)
    uneven = min(sizes) != k
    if uneven:
        keep = torch.empty(len(sizes), k, dtype=torch.long)
        values = torch.zeros(len(sizes), k, dtype=dtype)
        for g, kept in enumerate(mask.keep):
            dropped = torch.ones(mask.n, dtype=torch.bool)
            dropped[kept] = False
            keep[g] = torch.cat([kept, dropped.nonzero().flatten()[: k - sizes[g]]])
            values[g, : sizes[g]] = mask.values[g] if mask.values is not None else mask.scale
    else:
        keep = torch.stack(mask.keep) if mask.keep else torch.empty(0, 0, dtype=torch.long)
        values = None if mask.values is None else torch.stack(mask.values).to(dtype)
    step_set = torch.tensor(mask.step_group, dtype=torch.long)
    parts = [keep, step_set] + ([mask.perm] if mask.perm is not None else []) + (
        [values] if values is not None else [])
    moved = _upload(parts, device or "cpu")
    keep, step_set = moved[0], moved[1]
    perm = moved[2] if mask.perm is not None else None
    values = moved[-1] if values is not None else None
    set_steps = [[] for _ in sizes]
    for t, g in enumerate(mask.step_group):
        set_steps[g].append(t)
    return PackedMask(mask.n, keep, values, 1.0 if values is not None else float(mask.scale), step_set,
                      tuple(mask.step_group), tuple(tuple(s) for s in set_steps), sizes, perm,
                      tuple(mask.offsets) if mask.offsets is not None else None,
                      tuple(mask.strides) if mask.strides is not None else None)


_device_generators = weakref.WeakKeyDictionary()  # host generator -> {device: the generator seeded from it}


def device_generator(host, device):
    """The generator that masks drawn on ``device`` for the owner of the host generator ``host`` come from: seeded
    once from ``host``, so that a seed gives the same masks on the same device (None, the device's default
    generator, when ``host`` is None)."""
    if host is None:
        return None
    per_device = _device_generators.setdefault(host, {})
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # "cuda" and "cuda:0" are one generator
        device = torch.device("cuda", torch.cuda.current_device())
    key = str(device)
    if key not in per_device:
        seed = int(torch.randint(2 ** 62, (1,), generator=host))
        per_device[key] = torch.Generator(device).manual_seed(seed)
    return per_device[key]


def draw_time(p, n, steps, device, generator=None) -> PackedMask:
    """A ``time`` mask drawn where it is computed with: a fresh uniform set of ``k = kept_count(p, n)`` units for
    every step, the ``k`` smallest of ``n`` uniform draws (as :func:`~onmt_structdrop.masks.sample_time` on the
    host), from ``generator`` on ``device`` (its default generator when None). Nothing is read back or uploaded:
    the planning data follow from ``steps`` and ``k`` alone, so a GPU draws it without waiting for the host."""
    k = kept_count(p, n)
    draws = torch.rand(steps, n, device=device, generator=generator)
    keep = draws.topk(k, dim=1, largest=False, sorted=False).indices.sort(dim=1).values
    return PackedMask(n, keep, None, n / k, torch.arange(steps, device=device), tuple(range(steps)),
                      tuple((t,) for t in range(steps)), (k,) * steps)


Mask = Union[None, PackedMask, torch.Tensor]


def prepare(mask, device, dtype, compact=True, batch_order=None) -> Mask:
    """The one place where a mask takes the form it is computed with.

    ``mask`` is ``None``, a :class:`StructuredMask`, or a tensor (``[T, n]``: any values, the same for the whole
    batch; ``[T, B, n]``: per row). Structured and ``[T, n]`` masks become a :class:`PackedMask` when ``compact``;
    every other mask is a dense tensor on ``device`` in ``dtype`` (rows reordered by ``batch_order`` when given).
    """
    if mask is None or isinstance(mask, PackedMask):
        return mask
    if isinstance(mask, StructuredMask):
        return pack(mask, device, dtype) if compact else mask.dense(dtype).to(device)
    if mask.dim() == 2 and compact:
        return pack(mask_from_dense(mask.detach().cpu()), device, dtype)
    mask = mask.to(device=device, dtype=dtype)
    if mask.dim() == 3 and batch_order is not None:
        mask = mask.index_select(1, batch_order)
    return mask

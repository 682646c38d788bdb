"""Dropout masks over the units of a sequence of activations.

A mask covers ``steps`` time positions and ``n`` units. Structured masks keep the same units for every sequence
of the batch, so a dropped unit is a whole zero column of the ``B x n`` activation matrix at that step and the
products that read it can skip it. Modes:

``time``      the paper's scheme: at every step exactly ``k`` units are kept, a fresh uniform random subset each
              step, independent across steps.
``pool``      at every step exactly ``k`` units are kept: one of ``pool_size`` kept sets drawn per forward call,
              chosen uniformly at each step (by default ``ceil(1 / min(p, 1 - p))``, at least 2: the smallest
              pool in which no unit is in every set or in none). The sets are cyclic windows of ``k``
              consecutive units of one random permutation, at evenly spaced starts, so within a call every unit
              belongs to the same number of sets (to within one). Each set is a uniform random ``k``-subset,
              so every unit is kept with probability exactly ``k / n`` at every step, as in ``time``; what
              changes is that steps may share a set. One permuted copy of a weight per call holds every set's
              rows as a slice, and the steps sharing a set share one product.
``batch``     batchwise dropout: one random ``k``-subset for all steps of the call.
``bernoulli`` ordinary dropout: an independent draw per element (time, sequence, unit); nothing to compact.

``k = max(1, round((1 - p) * n))`` and kept values are scaled by ``n / k`` (``1 / (1 - p)`` in ``bernoulli``
mode), so every mask has expectation exactly one per element and a dropout layer leaves the expectation of
its input unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional

import torch

MASK_MODES = ("time", "pool", "batch", "bernoulli")
STRUCTURED_MODES = ("time", "pool", "batch")
DEFAULT_POOL_SIZE = None  # automatic: see auto_pool_size


def check_rate(p, name="dropout"):
    """Return ``p`` as a float, or raise naming the bad value: dropout rates live in [0, 1)."""
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1), got {p!r}")
    if not (0.0 <= p < 1.0) or math.isnan(p):
        raise ValueError(f"{name} must be in [0, 1), got {p!r}")
    return float(p)


def check_mode(mode):
    if mode not in MASK_MODES:
        raise ValueError(f"mask_mode must be one of {', '.join(MASK_MODES)}; got {mode!r}")
    return mode


def kept_count(p, n):
    """Units kept per step: round((1-p) n), at least one so that the scale n/k stays finite."""
    return max(1, int(math.floor((1.0 - p) * n + 0.5)))


@dataclass
class StructuredMask:
    """Kept units per time step, shared by every sequence of the batch.

    Steps with the same kept set form a group: ``keep[g]`` lists group ``g``'s kept units and ``group_steps[g]``
    its time positions; ``values[g]`` (optional) holds the kept units' multipliers when they are not all equal
    to ``scale``. When every set is a cyclic window of one permutation ``perm`` (``pool`` mode), ``offsets[g]``
    is the start of group ``g``'s window: ``keep[g] == cat([perm, perm])[offsets[g]:offsets[g] + k]``.
    """

    n: int
    steps: int
    keep: List[torch.Tensor]
    group_steps: List[torch.Tensor]
    scale: float = 1.0
    values: Optional[List[torch.Tensor]] = None
    perm: Optional[torch.Tensor] = None
    offsets: Optional[List[int]] = None
    step_group: List[int] = field(default_factory=list)

    def __post_init__(self):
        if not self.step_group:
            step_group = [-1] * self.steps
            for g, steps in enumerate(self.group_steps):
                for t in steps.tolist():
                    step_group[t] = g
            self.step_group = step_group

    def to(self, device):
        move = lambda ts: None if ts is None else [t.to(device) for t in ts]  # noqa: E731
        return StructuredMask(self.n, self.steps, move(self.keep), move(self.group_steps), self.scale,
                              move(self.values), None if self.perm is None else self.perm.to(device),
                              self.offsets, list(self.step_group))

    def dense(self, dtype=torch.float32):
        """The mask as a ``[steps, n]`` tensor: 0 for dropped units, the multiplier for kept ones."""
        out = torch.zeros(self.steps, self.n, dtype=dtype, device=self.keep[0].device)
        for g, (keep, steps) in enumerate(zip(self.keep, self.group_steps)):
            vals = self.values[g].to(dtype) if self.values is not None else torch.full(
                (len(keep),), self.scale, dtype=dtype, device=out.device)
            out[steps.unsqueeze(1), keep.unsqueeze(0)] = vals.unsqueeze(0).expand(len(steps), -1)
        return out


def _single_groups(keeps):
    return [torch.tensor([t]) for t in range(len(keeps))]


def sample_time(p, n, steps, generator=None):
    k = kept_count(p, n)
    keep = torch.rand(steps, n, generator=generator).argsort(dim=1)[:, :k].sort(dim=1).values
    keeps = list(keep.unbind(0))
    return StructuredMask(n, steps, keeps, _single_groups(keeps), scale=n / k)


def sample_batch(p, n, steps, generator=None):
    k = kept_count(p, n)
    keep = torch.randperm(n, generator=generator)[:k].sort().values
    return StructuredMask(n, steps, [keep], [torch.arange(steps)], scale=n / k)


def auto_pool_size(p):
    """The smallest pool in which no unit is in every set nor in none (for ``k / n`` close to ``1 - p``)."""
    return max(2, math.ceil(1.0 / min(p, 1.0 - p) - 1e-9))


def check_pool_size(size):
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"pool_size must be a positive integer or None, got {size!r}")
    return size


def pool_assignment(steps, size, generator=None):
    """Which of the pool's sets each step uses: uniform and independent across steps."""
    return torch.randint(size, (steps,), generator=generator).tolist()


def sample_pool(p, n, steps, generator=None, size=DEFAULT_POOL_SIZE, assignment=None):
    size = check_pool_size(size) or auto_pool_size(p)
    k = kept_count(p, n)
    perm = torch.randperm(n, generator=generator)
    perm2 = perm.repeat(2)
    starts = [(j * n) // size for j in range(size)]
    choice = assignment if assignment is not None else pool_assignment(steps, size, generator)
    if len(choice) != steps or not all(0 <= c < size for c in choice):
        raise ValueError(f"a pool assignment needs {steps} set indices in [0, {size}), got {choice!r}")
    used = sorted(set(choice))
    group_steps = [torch.tensor([t for t, c in enumerate(choice) if c == u]) for u in used]
    return StructuredMask(n, steps, [perm2[starts[u]:starts[u] + k] for u in used], group_steps, scale=n / k,
                          perm=perm, offsets=[starts[u] for u in used])


def sample_bernoulli(p, n, steps, batch, generator=None):
    keep = torch.rand(steps, batch, n, generator=generator) >= p
    return keep.float().mul_(1.0 / (1.0 - p))


def sample_mask(mode, p, n, steps, batch=None, generator=None, pool_size=DEFAULT_POOL_SIZE, assignment=None):
    """Draw a mask for ``steps`` positions of ``n`` units; ``None`` when ``p == 0`` (nothing dropped).

    Returns a :class:`StructuredMask` for structured modes, a ``[steps, batch, n]`` float tensor for
    ``bernoulli``. Masks are drawn on the CPU from ``generator`` (the global generator when ``None``), so a
    seed gives the same masks on every device. In ``pool`` mode, ``assignment`` (see :func:`pool_assignment`)
    fixes which set each step uses, so that several masks can share their grouping of steps.
    """
    p = check_rate(p)
    check_mode(mode)
    if p == 0.0:
        return None
    if mode == "time":
        return sample_time(p, n, steps, generator)
    if mode == "batch":
        return sample_batch(p, n, steps, generator)
    if mode == "pool":
        return sample_pool(p, n, steps, generator, pool_size, assignment)
    if batch is None:
        raise ValueError("bernoulli masks need the batch size")
    return sample_bernoulli(p, n, steps, batch, generator)


def mask_from_dense(mask):
    """A :class:`StructuredMask` that compacts an explicit ``[steps, n]`` mask (any values, any count per step)."""
    steps, n = mask.shape
    keeps, values = [], []
    for t in range(steps):
        keep = mask[t].nonzero().flatten()
        keeps.append(keep)
        values.append(mask[t, keep])
    return StructuredMask(n, steps, keeps, _single_groups(keeps), values=values)

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
              rows as a slice, and the steps sharing a set share one product. The price is fewer distinct
              masks per call: on Multi30k translation the automatic pool (4 sets at p = 0.3) learned markedly
              slower than 16 sets or ``time`` (``docs/results.md``).
``batch``     batchwise dropout: one random ``k``-subset for all steps of the call.
``rbd``       approximate random dropout, row based (Song et al., DATE 2019): of every ``dp`` consecutive units
              one is kept, starting at ``offset``; ``dp`` is drawn from a searched distribution over
              ``{1, ..., dp_max}`` (:func:`pattern_distribution`) and ``offset`` uniformly in ``[0, dp)``, afresh at
              every step (or once per call). Kept units are scaled by ``dp``.
``tbd``       the same over tiles of ``tile_size`` consecutive units, so kept weight rows come in tiles.
``bernoulli`` ordinary dropout: an independent draw per element (time, sequence, unit); nothing to compact.

``k = max(1, round((1 - p) * n))`` and kept values are scaled by ``n / k`` (``1 / (1 - p)`` in ``bernoulli``
mode, ``dp`` in ``rbd``/``tbd``), so every mask has expectation exactly one per element and a dropout layer
leaves the expectation of its input unchanged.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy
import torch

MASK_MODES = ("time", "pool", "batch", "rbd", "tbd", "bernoulli")
STRUCTURED_MODES = ("time", "pool", "batch", "rbd", "tbd")
PATTERN_MODES = ("rbd", "tbd")
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
    strides: Optional[List[Tuple[int, int]]] = None  # (start, step): keep[g] == arange(start, n, step)

    def __post_init__(self):
        if not self.step_group:
            step_group = [-1] * self.steps
            for g, steps in enumerate(self.group_steps):
                for t in steps.tolist():
                    if 0 <= t < self.steps:  # a step out of range is left to check_mask to report
                        step_group[t] = g
            self.step_group = step_group

    def to(self, device):
        move = lambda ts: None if ts is None else [t.to(device) for t in ts]  # noqa: E731
        return StructuredMask(self.n, self.steps, move(self.keep), move(self.group_steps), self.scale,
                              move(self.values), None if self.perm is None else self.perm.to(device),
                              self.offsets, list(self.step_group), self.strides)

    def dense(self, dtype=torch.float32):
        """The mask as a ``[steps, n]`` tensor: 0 for dropped units, the multiplier for kept ones."""
        out = torch.zeros(self.steps, self.n, dtype=dtype, device=self.keep[0].device)
        if all(len(s) == 1 for s in self.group_steps) and len({len(k) for k in self.keep}) == 1:
            # a set per step, all of one size (``time``): one scatter instead of a loop over the steps
            keep = torch.stack(self.keep)
            vals = (torch.stack(self.values).to(dtype) if self.values is not None
                    else torch.full(keep.shape, self.scale, dtype=dtype, device=out.device))
            out.index_put_((torch.cat(self.group_steps).unsqueeze(1), keep), vals)
            return out
        for g, (keep, steps) in enumerate(zip(self.keep, self.group_steps)):
            vals = self.values[g].to(dtype) if self.values is not None else torch.full(
                (len(keep),), self.scale, dtype=dtype, device=out.device)
            out[steps.unsqueeze(1), keep.unsqueeze(0)] = vals.unsqueeze(0).expand(len(steps), -1)
        return out


@dataclass
class _Drawn:
    masks: object  # StructuredMask, tensor or None, or dicts and lists of them
    dtype: torch.dtype


def _dense_tree(masks, dtype):
    if isinstance(masks, dict):
        return {key: _dense_tree(m, dtype) for key, m in masks.items()}
    if isinstance(masks, (list, tuple)):
        return [_dense_tree(m, dtype) for m in masks]
    # a StructuredMask, or a mask drawn on the device in its packed form
    return masks.dense(dtype) if hasattr(masks, "dense") and not torch.is_tensor(masks) else masks


class DenseOnRead:
    """A module's record of the masks of its last training forward (``last_masks``): kept as drawn and made dense
    when first read (:class:`StructuredMask` as ``[T, n]`` tensors of ``dtype``; tensors and None as they are).
    Making them dense takes a few operations per mask, and a training loop rarely reads them."""

    def __set_name__(self, owner, name):
        self.slot = "_" + name

    def __get__(self, module, owner=None):
        if module is None:
            return self
        value = module.__dict__.get(self.slot)
        if isinstance(value, _Drawn):
            value = module.__dict__[self.slot] = _dense_tree(value.masks, value.dtype)
        return value

    def __set__(self, module, value):
        module.__dict__[self.slot] = value

    @staticmethod
    def drawn(masks, dtype):
        """What to assign: ``masks`` as drawn, to be made dense in ``dtype`` when read."""
        return _Drawn(masks, dtype)


def _single_groups(keeps):
    return list(torch.arange(len(keeps)).unsqueeze(1).unbind(0))  # [tensor([0]), tensor([1]), ...]


def sample_time(p, n, steps, generator=None):
    k = kept_count(p, n)
    # the k smallest of uniform draws per step: a uniform random k-subset. numpy's partition finds them in linear
    # time (the same units as a full sort: draws do not tie), several times faster than torch's sort on the CPU
    draws = torch.rand(steps, n, generator=generator).numpy()
    keep = torch.from_numpy(numpy.sort(numpy.argpartition(draws, k - 1, axis=1)[:, :k], axis=1))
    keeps = list(keep.unbind(0))
    return StructuredMask(n, steps, keeps, _single_groups(keeps), scale=n / k)


def sample_batch(p, n, steps, generator=None):
    k = kept_count(p, n)
    keep = torch.randperm(n, generator=generator)[:k].sort().values
    return StructuredMask(n, steps, [keep], [torch.arange(steps)], scale=n / k)


MAX_AUTO_POOL = 1024  # ceil(1 / p) grows without bound as p -> 0; a batch never uses more sets than steps


def auto_pool_size(p):
    """The smallest pool in which no unit is in every set nor in none (for ``k / n`` close to ``1 - p``), at most
    ``MAX_AUTO_POOL`` sets."""
    smaller = min(p, 1.0 - p)
    if smaller * MAX_AUTO_POOL <= 1.0:
        return MAX_AUTO_POOL
    return max(2, math.ceil(1.0 / smaller - 1e-9))


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
    choice = assignment if assignment is not None else pool_assignment(steps, size, generator)
    if len(choice) != steps or not all(0 <= c < size for c in choice):
        raise ValueError(f"a pool assignment needs {steps} set indices in [0, {size}), got {choice!r}")
    used = sorted(set(choice))
    starts = {u: (u * n) // size for u in used}  # set u is the window of k units from its start
    group_steps = [torch.tensor([t for t, c in enumerate(choice) if c == u]) for u in used]
    return StructuredMask(n, steps, [perm2[starts[u]:starts[u] + k] for u in used], group_steps, scale=n / k,
                          perm=perm, offsets=[starts[u] for u in used])


@dataclass(frozen=True)
class PatternOptions:
    """Parameters of the ``rbd``/``tbd`` modes: ``dp`` ranges over ``1..dp_max``; its distribution is searched
    with entropy weight ``lam``; ``tile_size`` units per tile in ``tbd`` (``None``: the largest power of two up
    to 32 that divides the width); ``per_batch`` draws one pattern per call instead of one per step."""

    dp_max: int = 8
    lam: float = 1e-4
    tile_size: Optional[int] = None
    per_batch: bool = False

    def __post_init__(self):
        if isinstance(self.dp_max, bool) or not isinstance(self.dp_max, int) or self.dp_max < 1:
            raise ValueError(f"dp_max must be an integer >= 1, got {self.dp_max!r}")
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or not self.lam >= 0:
            raise ValueError(f"the pattern search's lambda must be >= 0, got {self.lam!r}")
        if self.tile_size is not None and (isinstance(self.tile_size, bool) or not isinstance(self.tile_size, int)
                                           or self.tile_size < 1):
            raise ValueError(f"tile_size must be a positive integer or None, got {self.tile_size!r}")


@functools.lru_cache(maxsize=None)
def pattern_distribution(p, dp_max=8, lam=1e-4, iterations=1500):
    """The probabilities of ``dp = 1..dp_max`` whose expected dropout rate ``E[1 - 1/dp]`` is ``p``, as spread as
    possible: Song et al.'s search, minimising ``(rate - p)^2 - lam * entropy`` by gradient descent over a
    softmax. Deterministic and cached. Returns ``(probabilities, achieved rate)``."""
    p = check_rate(p)
    PatternOptions(dp_max, lam)
    top = 1.0 - 1.0 / dp_max
    if p > top + 1e-12:
        raise ValueError(f"dropout {p} cannot be reached with dp_max={dp_max} (at most {top:.4f}); "
                         f"use dp_max >= {math.ceil(1.0 / (1.0 - p) - 1e-9)}")
    rates = 1.0 - 1.0 / torch.arange(1, dp_max + 1, dtype=torch.float64)
    logits = torch.zeros(dp_max, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.Adam([logits], lr=0.05)
    for _ in range(iterations):
        probs = torch.softmax(logits, 0)
        entropy = -(probs * torch.log(probs.clamp_min(1e-300))).sum()
        loss = 1e4 * ((probs @ rates - p) ** 2 - lam * entropy)  # scaled up so that Adam's steps resolve it
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    probs = torch.softmax(logits.detach(), 0)
    # the entropy term leaves the rate a hair off p: mix in the tiny weight of dp = 1 (rate 0) or dp = dp_max
    # (the top rate) that makes it exact
    achieved = float(probs @ rates)
    if achieved != p:
        j = 0 if achieved > p else dp_max - 1
        w = (achieved - p) / (achieved - float(rates[j]))
        probs = (1 - w) * probs
        probs[j] += w
    return tuple(probs.tolist()), float(probs @ rates)


def check_tile_size(tile_size, n):
    if tile_size is None:
        return next(t for t in (32, 16, 8, 4, 2, 1) if n % t == 0)
    if n % tile_size:
        raise ValueError(f"tile_size {tile_size} does not divide the width {n}")
    return tile_size


def check_pattern(pattern, mode, widths):
    """``pattern`` checked for a module whose masks cover each of ``widths`` units: a ``PatternOptions`` whose
    ``tbd`` tile size, when given, divides every width (found when the module is built, not at its first step)."""
    if not isinstance(pattern, PatternOptions):
        raise TypeError(f"pattern must be a PatternOptions, got {type(pattern).__name__}")
    if mode == "tbd" and pattern.tile_size is not None:
        for n in widths:
            if n % pattern.tile_size:
                raise ValueError(f"tbd tile_size {pattern.tile_size} does not divide the width {n} of a masked "
                                 f"input; pick a divisor of every width, or the automatic size (None; sd_tile_size 0)")
    return pattern


def sample_pattern(mode, p, n, steps, generator=None, options=PatternOptions()):
    """``rbd``/``tbd`` masks: at each step (or once per call) ``dp`` from :func:`pattern_distribution` and an
    offset uniform in ``[0, dp)``; of every ``dp`` consecutive tiles the one at the offset is kept."""
    probs, _ = pattern_distribution(p, options.dp_max, options.lam)
    tile = 1 if mode == "rbd" else check_tile_size(options.tile_size, n)
    draws = 1 if options.per_batch else steps
    dps = torch.multinomial(torch.tensor(probs), draws, replacement=True, generator=generator) + 1
    offsets = (torch.rand(draws, generator=generator, dtype=torch.float64) * dps).floor().long()
    groups = {}
    for t in range(steps):
        d = 0 if options.per_batch else t
        groups.setdefault((int(dps[d]), int(offsets[d])), []).append(t)
    keeps, values, strides = [], [], []
    for (dp, offset), _ in groups.items():
        tiles = torch.arange(offset, max(offset, n // tile), dp)  # empty when the offset lies past the end
        keeps.append((tiles.unsqueeze(1) * tile + torch.arange(tile)).flatten())
        values.append(torch.full((len(keeps[-1]),), float(dp)))
        strides.append((offset, dp))
    return StructuredMask(n, steps, keeps, [torch.tensor(ts) for ts in groups.values()], values=values,
                          strides=strides if tile == 1 else None)


def sample_bernoulli(p, n, steps, batch, generator=None):
    keep = torch.rand(steps, batch, n, generator=generator) >= p
    return keep.float().mul_(1.0 / (1.0 - p))


def sample_mask(mode, p, n, steps, batch=None, generator=None, pool_size=DEFAULT_POOL_SIZE, assignment=None,
                pattern=PatternOptions()):
    """Draw a mask for ``steps`` positions of ``n`` units; ``None`` when ``p == 0`` (nothing dropped).

    Returns a :class:`StructuredMask` for structured modes, a ``[steps, batch, n]`` float tensor for
    ``bernoulli``. Masks are drawn on the CPU from ``generator`` (the global generator when ``None``), so a
    seed gives the same masks on every device. In ``pool`` mode, ``assignment`` (see :func:`pool_assignment`)
    fixes which set each step uses, so that several masks can share their grouping of steps. ``pattern``
    (:class:`PatternOptions`) parametrises ``rbd`` and ``tbd``.
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
    if mode in PATTERN_MODES:
        return sample_pattern(mode, p, n, steps, generator, pattern)
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

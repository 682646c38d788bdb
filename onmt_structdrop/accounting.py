"""A tally of what structured dropout did, for training reports: the multiply-adds of the LSTM and output
products done against those at full width, the realised keep rate of each dropout site, and the backends that
served. It counts only while ``tally.enabled`` is set and gradients are on (training, not validation), from
host-side mask data; ``take()`` returns the counts since the last take and starts afresh.
"""
from __future__ import annotations

from collections import Counter

import torch

from .masks import StructuredMask
from .ops.packed import PackedMask


def kept_fraction(mask, n, steps):
    """The share of ``n`` units a mask keeps, over its ``steps`` (1.0 for no mask). Structured masks answer from
    their host-side data; a dense mask is counted on its device."""
    if mask is None or n * steps == 0:
        return 1.0
    if isinstance(mask, PackedMask):
        return sum(mask.sizes[g] for g in mask.step_sets) / (n * steps)
    if isinstance(mask, StructuredMask):
        return sum(len(k) * len(s) for k, s in zip(mask.keep, mask.group_steps)) / (n * steps)
    return float((mask != 0).float().mean())


class Tally:
    def __init__(self):
        self.enabled = False
        self.take()

    @property
    def active(self):
        return self.enabled and torch.is_grad_enabled()

    def product(self, rows, n, n_out, mask=None, steps=1, fraction=None):
        """A product of ``rows`` rows (all steps together) of ``n`` inputs into ``n_out`` outputs; with a packed
        mask over ``steps`` steps only its kept inputs are multiplied (a dense mask skips nothing), or the given
        ``fraction`` of them."""
        full = rows * n * n_out
        if fraction is None:
            fraction = kept_fraction(mask, n, steps) if isinstance(mask, PackedMask) else 1.0
        self.full += full
        self.done += full * fraction

    def site(self, name, mask, n, steps):
        """The units a dropout site kept (``mask`` over ``n`` units and ``steps`` steps)."""
        kept, total = self.sites.get(name, (0.0, 0))
        self.sites[name] = (kept + kept_fraction(mask, n, steps) * n * steps, total + n * steps)

    def backend(self, name):
        self.backends[name] += 1

    def take(self):
        """``{"skipped": share of multiply-adds skipped, "keep": {site: rate}, "backends": {name: calls}}`` since
        the last take (None if nothing was counted), and a fresh start."""
        report = None
        if getattr(self, "full", 0):
            report = {"skipped": 1 - self.done / self.full,
                      "keep": {name: kept / total for name, (kept, total) in self.sites.items() if total},
                      "backends": dict(self.backends)}
        self.done = self.full = 0
        self.sites, self.backends = {}, Counter()
        return report


tally = Tally()

"""Structured dropout for LSTMs: the same units dropped for every sequence, a fresh set at every step, so that
the dropped units' share of every matrix product is skipped instead of multiplied by zero."""
from .linear import StructuredDropoutLinear
from .lstm import StructDropLSTM
from .masks import MASK_MODES, StructuredMask, sample_mask

__all__ = ["StructDropLSTM", "StructuredDropoutLinear", "StructuredMask", "sample_mask", "MASK_MODES"]
__version__ = "0.1.0"

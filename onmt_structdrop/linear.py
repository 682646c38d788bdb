"""``StructuredDropoutLinear``: dropout then a linear layer, whose product skips the dropped inputs."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from . import ops
from .functions import sequence_linear
from .mask_checks import check_generator, check_mask, check_no_transform
from .masks import (DEFAULT_POOL_SIZE, DenseOnRead, PatternOptions, StructuredMask, check_mode, check_pattern,
                    check_pool_size,
                    check_rate, sample_mask)


class StructuredDropoutLinear(nn.Module):
    """Dropout on the input followed by ``nn.Linear``, with the product shrunk to the kept input units.

    The input is ``[T, B, in_features]`` (``[B, T, in_features]`` with ``batch_first``) or of any other rank
    (``[..., in_features]``, as ``nn.Linear`` takes: a single step, one mask for all rows). Masks follow
    ``mask_mode`` as in :class:`~onmt_structdrop.StructDropLSTM`: the same kept units for every sequence, a fresh draw per step.
    Parameters are named and shaped as ``nn.Linear``'s (``weight``, ``bias``), so state dicts are interchangeable.
    ``last_mask`` holds the mask of the last training forward (``[T, in_features]``, or ``[T, B, in_features]``
    in ``bernoulli`` mode).
    """

    last_mask = DenseOnRead()

    def __init__(self, in_features, out_features, bias=True, dropout=0.0, mask_mode="time", batch_first=False,
                 pool_size=DEFAULT_POOL_SIZE, compact=True, generator=None, pattern=PatternOptions(), device=None,
                 dtype=None):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.in_features, self.out_features = in_features, out_features
        self.dropout = check_rate(dropout)
        self.mask_mode = check_mode(mask_mode)
        self.batch_first, self.compact = bool(batch_first), bool(compact)
        self.pool_size = check_pool_size(pool_size)
        self.generator = check_generator(generator)
        self.pattern = check_pattern(pattern, self.mask_mode, [in_features])
        self.last_mask = None
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):  # nn.Linear's initialisation
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, dropout={self.dropout}, mask_mode={self.mask_mode!r}")

    def forward(self, x, mask=None):
        if not torch.is_tensor(x) or x.dim() < 1 or x.shape[-1] != self.in_features:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"StructuredDropoutLinear expects [..., {self.in_features}] input (any leading "
                             f"dimensions), got {got}")
        if x.dim() != 3:  # any other rank: one step, every leading dimension a row (as nn.Linear's batch)
            steps = x.reshape(1, -1, self.in_features)
            y = self.forward(steps.transpose(0, 1) if self.batch_first else steps, mask)
            return y.reshape(*x.shape[:-1], self.out_features)
        if mask is None and (not self.training or self.dropout == 0.0):
            return F.linear(x, self.weight, self.bias)
        check_no_transform(x, type(self).__name__)
        xt = x.transpose(0, 1) if self.batch_first else x
        T, B, n = xt.shape
        if T == 0 or B == 0:  # nothing to drop (nn.Linear's empty result), an explicit mask checked all the same
            check_mask(mask, "mask", T, n, B)
            return F.linear(x, self.weight, self.bias)
        if mask is None and ops.draws_own_masks(self.mask_mode, self.compact, x.device):
            mask = ops.draw_time(self.dropout, n, T, x.device, ops.device_generator(self.generator, x.device))
        elif mask is None:
            mask = sample_mask(self.mask_mode, self.dropout, n, T, batch=B, generator=self.generator,
                               pool_size=self.pool_size, pattern=self.pattern)
        else:
            mask = check_mask(mask, "mask", T, n, B)
        self.last_mask = DenseOnRead.drawn(mask, x.dtype)
        # an explicit tensor mask is multiplied in, as given
        internal = ops.prepare(mask, x.device, x.dtype, compact=self.compact and isinstance(mask, StructuredMask))
        y = sequence_linear(xt, self.weight, self.bias, internal)
        return y.transpose(0, 1) if self.batch_first else y

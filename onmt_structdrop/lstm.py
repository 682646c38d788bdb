"""``StructDropLSTM``: a drop-in for ``torch.nn.LSTM`` whose dropout skips the dropped work."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import _VF, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from . import ops
from .accounting import tally
from .functions import LSTMLayerFunction
from .mask_checks import check_generator, check_mask, check_no_transform
from .masks import (DEFAULT_POOL_SIZE, DenseOnRead, PatternOptions, auto_pool_size, check_mode, check_pattern,
                    check_pool_size, check_rate, pool_assignment, sample_mask)


def _check_size(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


@torch.compiler.disable
def _stock_lstm(*args):
    """nn.LSTM's own kernel. torch.compile runs it as it is, as it does nn.LSTM (dynamo does not trace RNN
    modules): traced, the CPU kernel (``mkldnn_rnn_layer``) fails to compile."""
    return _VF.lstm(*args)


class StructDropLSTM(nn.Module):
    r"""Multi-layer LSTM with structured dropout, interchangeable with :class:`torch.nn.LSTM`.

    Same constructor arguments, forward contract, parameter names and shapes as ``nn.LSTM`` (without
    ``proj_size``, which is refused unless 0), plus:

    Args:
        dropout: rate of the non-recurrent dropout on the input of every layer but the first (as in nn.LSTM).
        recurrent_dropout: rate of the dropout on h(t-1) (h(t+1) in reverse) before the recurrent product.
        input_dropout: rate of the dropout on the input of the first layer.
        mask_mode: ``time`` (default; a fresh set of kept units per step, the same for every sequence),
            ``pool``, ``batch``, ``rbd``, ``tbd`` or ``bernoulli``; see :mod:`onmt_structdrop.masks`.
        pool_size: number of kept sets drawn per forward call in ``pool`` mode (``None``: automatic, the
            smallest pool in which no unit is kept or dropped at every step of a call).
        compact: skip the dropped units' work (default). ``False`` multiplies by the same masks instead, as a
            reference for speed.
        generator: ``torch.Generator`` (CPU) the masks are drawn from; the global generator when ``None``.
            ``time`` masks for a GPU are drawn there, from a device generator seeded once from it
            (:func:`onmt_structdrop.ops.draws_masks_on`).
        pattern: :class:`~onmt_structdrop.masks.PatternOptions` of the ``rbd`` and ``tbd`` modes.

    ``forward(input, hx=None, masks=None)`` also takes explicit masks in the format of :attr:`last_masks`,
    which holds, after a training-mode forward, the masks that were used: ``{"input": [per layer: [T, n_in]],
    "recurrent": [per layer: [per direction: [T, H]]]}`` (``[T, B, ...]`` in ``bernoulli`` mode; ``B`` in the
    input's batch order) with 0 for dropped units and the scale for kept ones, ``None`` where no dropout applies.
    In ``eval()`` no dropout applies and the outputs equal ``nn.LSTM``'s.
    """

    last_masks = DenseOnRead()

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, recurrent_dropout=0.0, input_dropout=0.0, mask_mode="time",
                 pool_size=DEFAULT_POOL_SIZE, compact=True, generator=None, pattern=PatternOptions(), device=None,
                 dtype=None, proj_size=0):
        super().__init__()
        if proj_size != 0:
            raise ValueError(f"StructDropLSTM has no proj_size (got {proj_size!r}): use nn.LSTM, or put a "
                             f"StructuredDropoutLinear after the LSTM")
        self.input_size = _check_size(input_size, "input_size")
        self.hidden_size = _check_size(hidden_size, "hidden_size")
        self.num_layers = _check_size(num_layers, "num_layers")
        self.bias, self.batch_first, self.bidirectional = bool(bias), bool(batch_first), bool(bidirectional)
        self.dropout = check_rate(dropout, "dropout")
        self.recurrent_dropout = check_rate(recurrent_dropout, "recurrent_dropout")
        self.input_dropout = check_rate(input_dropout, "input_dropout")
        self.mask_mode = check_mode(mask_mode)
        self.pool_size = check_pool_size(pool_size)
        self.compact = bool(compact)
        self.generator = check_generator(generator)
        self.pattern = check_pattern(pattern, self.mask_mode,
                                     {input_size, hidden_size} | ({hidden_size * self.num_directions}
                                                                   if num_layers > 1 else set()))
        self.last_masks = None
        self.site = "lstm"  # how training reports name this LSTM's dropout sites (onmt_structdrop.accounting)
        self.proj_size = 0  # read by code written for nn.LSTM

        factory = {"device": device, "dtype": dtype}
        H, dirs = hidden_size, self.num_directions
        self._flat_weights_names = []
        for layer in range(num_layers):
            n_in = input_size if layer == 0 else H * dirs
            for d in range(dirs):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                shapes = {"weight_ih": (4 * H, n_in), "weight_hh": (4 * H, H)}
                if self.bias:
                    shapes.update(bias_ih=(4 * H,), bias_hh=(4 * H,))
                for name, shape in shapes.items():
                    self.register_parameter(name + sfx, nn.Parameter(torch.empty(shape, **factory)))
                    self._flat_weights_names.append(name + sfx)
        self.reset_parameters()

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    def flatten_parameters(self):
        """No-op, for code written for ``nn.LSTM`` (weights are used in place, never flattened)."""

    @property
    def all_weights(self):
        return [[getattr(self, name) for name in self._flat_weights_names[i:i + (4 if self.bias else 2)]]
                for i in range(0, len(self._flat_weights_names), 4 if self.bias else 2)]

    def reset_parameters(self):
        bound = 1.0 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.bidirectional:
            s += ", bidirectional=True"
        return (s + f", dropout={self.dropout}, recurrent_dropout={self.recurrent_dropout}, "
                f"input_dropout={self.input_dropout}, mask_mode={self.mask_mode!r}")

    def _weights(self, layer, direction):
        sfx = f"_l{layer}" + ("_reverse" if direction else "")
        get = lambda name: getattr(self, name + sfx) if self.bias or "weight" in name else None  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")

    # ---- masks -------------------------------------------------------------------------------------------
    def _sample(self, p, n, T, B, assignment=None, pool_size=None):
        if not self.training or p == 0.0:
            return None
        return sample_mask(self.mask_mode, p, n, T, batch=B, generator=self.generator,
                           pool_size=pool_size or self.pool_size, assignment=assignment, pattern=self.pattern)

    def _pool_size(self, rates):
        """One pool size for the masks of a layer: the largest automatic size among its active rates."""
        active = [p for p in rates if p > 0]
        return self.pool_size or (max(auto_pool_size(p) for p in active) if active else None)

    def sample_masks(self, T, B, device=None):
        """Draw the masks of one training forward over ``T`` positions and ``B`` sequences; compacted ``time`` masks
        for a ``device`` that draws its own (:func:`onmt_structdrop.ops.draws_own_masks`) are drawn there, packed."""
        H, dirs, L = self.hidden_size, self.num_directions, self.num_layers
        if device is not None and ops.draws_own_masks(self.mask_mode, self.compact, device):
            generator = ops.device_generator(self.generator, device)

            def draw(p, n):
                return ops.draw_time(p, n, T, device, generator) if self.training and p > 0 else None
            return {"input": [draw(self.input_dropout if l == 0 else self.dropout,
                                   self.input_size if l == 0 else H * dirs) for l in range(L)],
                    "recurrent": [[draw(self.recurrent_dropout, H) for _ in range(dirs)] for _ in range(L)]}
        # In pool mode the masks of one layer share which set each step uses (the sets themselves are
        # independent), so the layer's products group the same steps together.
        rates = [(self.input_dropout if l == 0 else self.dropout, self.recurrent_dropout) for l in range(L)]
        sizes = [self._pool_size(r) for r in rates]
        pool = self.mask_mode == "pool" and self.training
        shared = [pool_assignment(T, size, self.generator) if pool and size else None for size in sizes]
        inputs = [self._sample(rates[l][0], self.input_size if l == 0 else H * dirs, T, B, shared[l], sizes[l])
                  for l in range(L)]
        recurrent = [[self._sample(rates[l][1], H, T, B, shared[l], sizes[l]) for _ in range(dirs)]
                     for l in range(L)]
        return {"input": inputs, "recurrent": recurrent}

    def _check_masks(self, masks, T, B):
        """Explicit masks, each checked (:func:`~onmt_structdrop.mask_checks.check_mask`) and in the form the
        layers compute with."""
        H, dirs, L = self.hidden_size, self.num_directions, self.num_layers
        if not isinstance(masks, dict) or set(masks) != {"input", "recurrent"}:
            raise ValueError("masks must be a dict with keys 'input' and 'recurrent'")
        if not isinstance(masks["input"], (list, tuple)) or not isinstance(masks["recurrent"], (list, tuple)) \
                or len(masks["input"]) != L or len(masks["recurrent"]) != L \
                or any(not isinstance(r, (list, tuple)) or len(r) != dirs for r in masks["recurrent"]):
            raise ValueError(f"masks must hold {L} input masks and {L} x {dirs} recurrent masks")
        return {"input": [check_mask(m, f"masks['input'][{l}]", T, self.input_size if l == 0 else H * dirs, B)
                          for l, m in enumerate(masks["input"])],
                "recurrent": [[check_mask(m, f"masks['recurrent'][{l}][{d}]", T, H, B) for d, m in enumerate(r)]
                              for l, r in enumerate(masks["recurrent"])]}

    # ---- forward -----------------------------------------------------------------------------------------
    def forward(self, input, hx=None, masks: Optional[dict] = None):
        packed = isinstance(input, PackedSequence)
        sorted_indices = unsorted_indices = batch_sizes = None
        if packed:
            sorted_indices, unsorted_indices = input.sorted_indices, input.unsorted_indices
            x, lengths = pad_packed_sequence(input)  # [T, B, n], original order
            if sorted_indices is not None:
                x, lengths = x.index_select(1, sorted_indices), lengths[sorted_indices.cpu()]
            batch_sizes = tuple(input.batch_sizes.tolist())  # a CPU tensor, by PackedSequence's contract
            unbatched = False
        else:
            x = input
            if not torch.is_tensor(x) or x.dim() not in (2, 3):
                raise ValueError(f"StructDropLSTM expects a 2-D or 3-D input or a PackedSequence, got "
                                 f"{'shape ' + str(tuple(x.shape)) if torch.is_tensor(x) else type(x).__name__}")
            unbatched = x.dim() == 2
            x = x.unsqueeze(1) if unbatched else (x.transpose(0, 1) if self.batch_first else x)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input has {x.shape[-1]} features, expected input_size={self.input_size}")
        w0 = self.weight_ih_l0
        if x.dtype != w0.dtype:
            raise TypeError(f"input dtype {x.dtype} does not match the parameters' dtype {w0.dtype}")
        if x.device != w0.device:
            raise ValueError(f"input is on {x.device} but the parameters are on {w0.device}")
        T, B, _ = x.shape
        if T == 0:  # as nn.LSTM
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        h0, c0 = self._initial_state(hx, B, x, unbatched, sorted_indices)

        explicit = masks is not None
        if explicit or (self.training and (self.dropout or self.recurrent_dropout or self.input_dropout)):
            check_no_transform(x, type(self).__name__)
        if explicit:
            masks = self._check_masks(masks, T, B)
        else:
            masks = self.sample_masks(T, B, x.device)
        if self.training or explicit:
            self.last_masks = DenseOnRead.drawn({"input": masks["input"], "recurrent": masks["recurrent"]}, x.dtype)
        # with no rows there is nothing to drop, and nn.LSTM's kernel returns the empty results
        no_dropout = B == 0 or all(m is None for m in masks["input"] + [m for r in masks["recurrent"] for m in r])
        if tally.active:
            self._count_sites(masks, T)
        if no_dropout:  # nothing to skip: nn.LSTM's own kernel (cuDNN on GPU), identical results
            if tally.active:
                rows = sum(batch_sizes) if packed else T * B
                for layer in range(self.num_layers):
                    for _ in range(self.num_directions):
                        self._count(layer, None, None, T, rows, "nn.LSTM")
            flat = [getattr(self, name) for name in self._flat_weights_names]
            if packed:
                data, h_n, c_n = _stock_lstm(input.data, input.batch_sizes, (h0, c0), flat, self.bias,
                                             self.num_layers, 0.0, self.training, self.bidirectional)
                layer_input = None
            else:
                layer_input, h_n, c_n = _stock_lstm(x, (h0, c0), flat, self.bias, self.num_layers, 0.0,
                                                    self.training, self.bidirectional, False)
        else:
            layer_input, h_n, c_n = self._run_layers(x, h0, c0, masks, batch_sizes, sorted_indices)
        if unsorted_indices is not None:
            h_n, c_n = h_n.index_select(1, unsorted_indices), c_n.index_select(1, unsorted_indices)

        output = layer_input
        if packed:
            if not no_dropout:
                data = pack_padded_sequence(output, lengths, enforce_sorted=True).data
            output = PackedSequence(data, input.batch_sizes, sorted_indices, unsorted_indices)
        elif unbatched:
            output, h_n, c_n = output.squeeze(1), h_n.squeeze(1), c_n.squeeze(1)
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, (h_n, c_n)

    def _count_sites(self, masks, T):
        """The keep rate of each dropout site of one forward, for the training report."""
        for layer, mask in enumerate(masks["input"]):
            n = self.input_size if layer == 0 else self.hidden_size * self.num_directions
            tally.site(f"{self.site} {'input' if layer == 0 else 'between layers'}", mask, n, T)
        for per_direction in masks["recurrent"]:
            for mask in per_direction:
                tally.site(f"{self.site} recurrent", mask, self.hidden_size, T)

    def _run_layers(self, x, h0, c0, masks, batch_sizes, sorted_indices):
        """The compacted computation: one autograd Function per layer and direction."""
        internal = lambda m: ops.prepare(m, x.device, x.dtype, self.compact, sorted_indices)  # noqa: E731
        h_n, c_n = [], []
        layer_input = x.contiguous()
        for layer in range(self.num_layers):
            in_mask = internal(masks["input"][layer])
            outputs = []
            for d in range(self.num_directions):
                k = layer * self.num_directions + d
                plan = ops.LayerPlan(in_mask, internal(masks["recurrent"][layer][d]), batch_sizes, reverse=d == 1)
                choice = ops.choose("lstm_layer", x, plan)
                if tally.active:
                    self._count(layer, choice.plan.input_mask, choice.plan.recurrent_mask, x.shape[0],
                                sum(batch_sizes) if batch_sizes else x.shape[0] * x.shape[1], choice.name)
                y, h, c = LSTMLayerFunction.apply(layer_input, h0[k], c0[k], *self._weights(layer, d), choice)
                outputs.append(y)
                h_n.append(h)
                c_n.append(c)
            layer_input = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
        return layer_input, torch.stack(h_n), torch.stack(c_n)

    def _count(self, layer, input_mask, recurrent_mask, T, rows, backend):
        """One layer and direction's products for the training report (:mod:`onmt_structdrop.accounting`)."""
        n, H = self.input_size if layer == 0 else self.hidden_size * self.num_directions, self.hidden_size
        tally.product(rows, n, 4 * H, input_mask, T)
        tally.product(rows, H, 4 * H, recurrent_mask, T)
        tally.backend(backend)

    def _initial_state(self, hx, B, x, unbatched, sorted_indices):
        shape = (self.num_layers * self.num_directions, B, self.hidden_size)
        if hx is None:
            zeros = x.new_zeros(shape)
            return zeros, zeros
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise ValueError("hx must be a tuple (h0, c0)")
        state = []
        for name, s in zip(("h0", "c0"), hx):
            s = s.unsqueeze(1) if unbatched and torch.is_tensor(s) and s.dim() == 2 else s
            if not torch.is_tensor(s) or tuple(s.shape) != shape:
                got = tuple(s.shape) if torch.is_tensor(s) else type(s).__name__
                raise ValueError(f"{name} must have shape {shape}, got {got}")
            if s.dtype != x.dtype:
                raise TypeError(f"{name} dtype {s.dtype} does not match the input dtype {x.dtype}")
            state.append(s if sorted_indices is None else s.index_select(1, sorted_indices))
        return state


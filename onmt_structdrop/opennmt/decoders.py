"""``sd_rnn`` and ``sd_ifrnn``: OpenNMT's RNN decoders with structured dropout, and a generator that skips the
units the decoder's output dropout drops.

Dropout sits where the stock decoders have it (embeddings, between layers, on the attentional output) plus on
h(t-1), all structured: the same units of every sentence are dropped, a fresh set per step ("mask mode"). The
output mask is what makes the generator (``hidden x vocab``, often the largest product of the model) shrink:
the decoder remembers the mask of its last training output, and the generator it builds computes its product on
the kept units only when it is given that very output (otherwise, e.g. in translation, it is ``nn.Linear``).
In ``eval()`` both decoders run the stock code, so translation is unchanged.
"""
from __future__ import annotations

import weakref

import torch
from onmt.decoders.decoder import InputFeedRNNDecoder, StdRNNDecoder
from torch import nn
from torch.nn import functional as F

from ..accounting import tally
from ..functions import StepProduct, lstm_cell, sequence_linear
from ..lstm import StructDropLSTM
from ..masks import DenseOnRead, check_pattern
from .. import ops
from ..ops import PackedMask
from .encoders import mask_generator, silence_embedding_dropout
from .options import Settings, built_from_options


def dense(mask, dtype):
    """A mask as a ``[T, n]`` (or ``[T, B, n]``) tensor, or None."""
    return mask.dense(dtype) if isinstance(mask, PackedMask) else mask


def apply_mask(x, mask):
    """Dropout of ``x`` ``[B, T, n]`` by a mask over its ``T`` steps (the same rows for the batch, or per row)."""
    if mask is None:
        return x
    mask = dense(mask, x.dtype)
    return x * (mask.unsqueeze(0) if mask.dim() == 2 else mask.transpose(0, 1))


class OutputMask:
    """The structured mask of a decoder's last training output, tied to that output tensor (weakly)."""

    def __init__(self):
        self.clear()

    def clear(self):
        self._output, self._mask = None, None

    def record(self, output, mask):
        """``output`` ``[B, T, H]`` already carries ``mask`` (a PackedMask over ``T`` steps and ``H`` units)."""
        self._output, self._mask = weakref.ref(output), mask

    def lookup(self, x):
        """``(mask, B, T)`` if ``x`` (``[B * T, H]``) is the recorded output itself or a view of it, else None."""
        output = self._output() if self._output is not None else None
        if output is None or x.dim() != 2 or not x.is_contiguous() or not output.is_contiguous():
            return None
        B, T, H = output.shape
        if x.data_ptr() != output.data_ptr() or tuple(x.shape) != (B * T, H):
            return None
        return self._mask, B, T


class StructDropGenerator(nn.Linear):
    """``nn.Linear`` (same parameters) whose product skips the units its decoder's output dropout dropped."""

    def __init__(self, in_features, out_features, output_mask: OutputMask, bias=True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device, dtype)
        self.output_mask = output_mask

    def forward(self, x):
        found = self.output_mask.lookup(x) if self.training else None
        # the rows of the decoder's batch-major output: compacted where the seam finds that it pays (one product
        # of a one-step mask), else the dense product, exact since the dropped units are zeros
        if found is None or not ops.choose("rows", x, found[0]).compact:
            if tally.active:
                tally.product(x.shape[0], self.in_features, self.out_features)
                tally.backend(ops.plain().NAME)
            return F.linear(x, self.weight, self.bias)
        mask, B, T = found  # (sequence_linear counts it for the training report)
        return sequence_linear(x.view(1, B * T, -1), self.weight, self.bias, mask.one_step().unscaled())[0]


class StructuredOutputDropout(nn.Module):
    """Structured dropout on a decoder's output ``[B, T, H]``; ``last_mask`` is the mask it drew."""

    def __init__(self, p, settings: Settings, generator=None):
        super().__init__()
        self.p, self.settings, self.generator = p, settings, generator
        self.last_mask = None

    def extra_repr(self):
        return f"p={self.p}, mask_mode={self.settings.mask_mode!r}"

    def forward(self, x):
        mask = self.settings.sample(self.p, x.shape[2], x.shape[1], x.shape[0], self.generator, x.device,
                                    x.dtype) if self.training else None
        if tally.active:
            tally.site("decoder output", mask, x.shape[2], x.shape[1])
        self.last_mask = mask
        return apply_mask(x, mask)


class _StructDropDecoder:
    """What both decoders share: settings, the output mask and the generator built on it."""

    def _setup(self, settings: Settings, embeddings):
        check_pattern(settings.pattern, settings.mask_mode, [embeddings.embedding_size, self.hidden_size])
        self.settings = settings
        silence_embedding_dropout(embeddings)
        self.output_mask = OutputMask()
        self.masks = mask_generator(settings.seed, 1)

    def build_generator(self, in_features, out_features):
        """Called by OpenNMT's model builder (patched) in place of ``nn.Linear(in_features, out_features)``."""
        return StructDropGenerator(in_features, out_features, self.output_mask)

    def forward(self, tgt, enc_out, src_len=None, step=None, **kwargs):
        """The stock forward (outputs and attention stacked batch first), then the output mask recorded for
        the generator."""
        self.output_mask.clear()
        dec_outs, attns = super().forward(tgt, enc_out, src_len=src_len, step=step, **kwargs)
        if isinstance(self._out_mask, PackedMask):  # structured and compact (else a dense tensor or None)
            self.output_mask.record(dec_outs, self._out_mask)
        return dec_outs, attns


class StructDropStdRNNDecoder(_StructDropDecoder, StdRNNDecoder):
    """OpenNMT's ``StdRNNDecoder`` (the whole target at once) on a :class:`~onmt_structdrop.StructDropLSTM`."""

    def __init__(self, bidirectional_encoder, num_layers, hidden_size, settings: Settings, attn_type="general",
                 attn_func="softmax", context_gate=None, embeddings=None):
        super().__init__("LSTM", bidirectional_encoder, num_layers, hidden_size, attn_type, attn_func,
                         context_gate=context_gate, dropout=settings.dropout, embeddings=embeddings)
        self._setup(settings, embeddings)
        self.rnn = StructDropLSTM(embeddings.embedding_size, hidden_size, num_layers, batch_first=True,
                                  input_dropout=settings.dropout, generator=mask_generator(settings.seed, 2),
                                  **settings.lstm_kwargs())
        self.rnn.site = "decoder"
        self.dropout = StructuredOutputDropout(settings.dropout, settings, self.masks)

    @classmethod
    def from_opt(cls, opt, embeddings):
        with built_from_options():
            return cls(opt.brnn, opt.dec_layers, opt.dec_hid_size, Settings(opt), opt.global_attention,
                       opt.global_attention_function, opt.context_gate, embeddings)

    @property
    def _out_mask(self):
        return self.dropout.last_mask

    def update_dropout(self, dropout, attention_dropout=None):
        self.settings.next_phase(dropout)
        self.dropout.p = self.rnn.dropout = self.rnn.input_dropout = self.settings.dropout
        self.rnn.recurrent_dropout = self.settings.recurrent_dropout


class StructDropInputFeedDecoder(_StructDropDecoder, InputFeedRNNDecoder):
    """OpenNMT's ``InputFeedRNNDecoder`` (step by step, attention, coverage, copy attention) with structured
    dropout; same parameters and names, so stock ``ifrnn`` weights load into it and back.

    In training, the embeddings' product of the first layer is computed for all steps at once, and every
    product reads only the kept units of its input: the embeddings, the previous step's output (input feed),
    h(t-1) and the layer below. ``last_masks`` holds the masks of the last training forward, made dense when read
    (``[T, n]``, ``[T, B, n]`` in bernoulli mode).
    """

    last_masks = DenseOnRead()

    def __init__(self, bidirectional_encoder, num_layers, hidden_size, settings: Settings, attn_type="general",
                 attn_func="softmax", coverage_attn=False, copy_attn=False, embeddings=None,
                 reuse_copy_attn=False, copy_attn_type="general"):
        super().__init__("LSTM", bidirectional_encoder, num_layers, hidden_size, attn_type, attn_func,
                         coverage_attn, None, copy_attn, settings.dropout, embeddings, reuse_copy_attn,
                         copy_attn_type)
        self._setup(settings, embeddings)
        self._out_mask = None
        self.last_masks = None

    @classmethod
    def from_opt(cls, opt, embeddings):
        with built_from_options():
            return cls(opt.brnn, opt.dec_layers, opt.dec_hid_size, Settings(opt), opt.global_attention,
                       opt.global_attention_function, opt.coverage_attn, opt.copy_attn, embeddings,
                       opt.reuse_copy_attn, opt.copy_attn_type)

    def extra_repr(self):
        s = self.settings
        return (f"structured dropout={s.dropout}, recurrent_dropout={s.recurrent_dropout}, mask_mode={s.mask_mode!r} "
                f"(in training the cells' weights run in compacted step products; the Dropout modules below serve "
                f"no step)")

    def _run_forward_pass(self, tgt, enc_out, src_len=None):
        s = self.settings
        if not self.training or (s.dropout == 0.0 and s.recurrent_dropout == 0.0):
            self._out_mask = None
            return super()._run_forward_pass(tgt, enc_out, src_len=src_len)

        emb = self.embeddings(tgt)  # [B, T, E]; the embeddings' own dropout is off
        B, T, E = emb.shape
        H, L, dev = self.hidden_size, self.num_layers, emb.device
        sample = lambda p, n: s.sample(p, n, T, B, self.masks, dev, emb.dtype)  # noqa: E731
        emb_mask = sample(s.dropout, E)
        between = [sample(s.dropout, H) for _ in range(L - 1)]
        recurrent = [sample(s.recurrent_dropout, H) for _ in range(L)]
        out_mask = self._out_mask = sample(s.dropout, H)
        if tally.active:
            for site, mask, n in [("decoder embedding", emb_mask, E), ("decoder output", out_mask, H)] + [
                    ("decoder between layers", m, H) for m in between] + [("decoder recurrent", m, H) for m in recurrent]:
                tally.site(site, mask, n, T)
        self.last_masks = DenseOnRead.drawn({"embedding": emb_mask, "between": between, "recurrent": recurrent,
                                             "output": out_mask}, emb.dtype)
        out_dense = dense(out_mask, emb.dtype)  # the output's dropout is multiplied in, step by step

        cells = self.rnn.layers
        w0 = cells[0].weight_ih
        pre = sequence_linear(emb.transpose(0, 1), w0[:, :E], cells[0].bias_ih + cells[0].bias_hh,
                              emb_mask).unbind(0)  # T steps of [B, 4H] (one node in backward, not one per step)
        feed = StepProduct(w0[:, E:], out_mask, scaled=True)  # the input feed is last step's masked output
        below = [StepProduct(cells[l].weight_ih, between[l - 1]) for l in range(1, L)]
        hidden = [StepProduct(cells[l].weight_hh, recurrent[l]) for l in range(L)]

        h, c = (list(x.unbind(0)) for x in self.state["hidden"])
        input_feed = self.state["input_feed"].squeeze(0)
        coverage = self.state["coverage"].squeeze(0) if self.state["coverage"] is not None else None
        dec_outs, attns = [], {}
        if self.attn is not None:
            attns["std"] = []
        if self.copy_attn is not None or self._reuse_copy_attn:
            attns["copy"] = []
        if self._coverage:
            attns["coverage"] = []
        for t in range(T):
            x = None
            for l in range(L):
                if l == 0:
                    gates = pre[t] + (feed(input_feed, t - 1) if t > 0 else F.linear(input_feed, w0[:, E:]))
                else:
                    gates = below[l - 1](x, t) + cells[l].bias_ih + cells[l].bias_hh
                h[l], c[l] = lstm_cell(gates + hidden[l](h[l], t), c[l])
                x = h[l]
            if self.attentional:
                dec_out, p_attn = self.attn(x, enc_out, src_len=src_len)
                attns["std"].append(p_attn)
            else:
                dec_out = x
            if out_dense is not None:
                dec_out = dec_out * out_dense[t]
            input_feed = dec_out
            dec_outs.append(dec_out)
            if self._coverage:
                coverage = p_attn if coverage is None else p_attn + coverage
                attns["coverage"].append(coverage)
            if self.copy_attn is not None:
                _, copy_attn = self.copy_attn(dec_out, enc_out)
                attns["copy"].append(copy_attn)
            elif self._reuse_copy_attn:
                attns["copy"] = attns["std"]
        return (torch.stack(h), torch.stack(c)), dec_outs, attns

    def update_dropout(self, dropout, attention_dropout=None):
        self.settings.next_phase(dropout)
        self.dropout.p = self.rnn.dropout.p = self.settings.dropout


def register():
    """Add the decoders to OpenNMT's ``str2dec`` (idempotent); runs when this module is imported."""
    from onmt.decoders import register_decoder, str2dec
    for name, cls in (("sd_rnn", StructDropStdRNNDecoder), ("sd_ifrnn", StructDropInputFeedDecoder)):
        if name not in str2dec:
            register_decoder(name)(cls)


register()

"""``sd_rnn`` / ``sd_brnn``: OpenNMT's RNN encoder with a :class:`~onmt_structdrop.StructDropLSTM`.

Dropout sits where the stock encoder has it (on the embeddings, between layers) plus on h(t-1), all structured.
The embeddings' own (element-wise) dropout is switched off: the LSTM drops its input instead, with the same
rate, so that the first layer's input product shrinks too.
"""
from __future__ import annotations

import torch
from onmt.encoders.rnn_encoder import RNNEncoder

from ..lstm import StructDropLSTM
from .options import Settings, built_from_options


def mask_generator(seed, offset):
    """A generator of its own for the masks when a seed is given (else None: torch's global generator)."""
    if seed is None or seed < 0:
        return None
    return torch.Generator().manual_seed(seed + offset)


def silence_embedding_dropout(embeddings):
    embeddings.dropout_p = 0.0
    embeddings.dropout.p = 0.0


class StructDropRNNEncoder(RNNEncoder):
    """OpenNMT's ``rnn`` encoder (``sd_brnn``: ``brnn``) with structured dropout; bridge supported.

    A bidirectional encoder returns its final states already merged to ``(layers, batch, hidden)``: OpenNMT
    merges the directions in the decoder only for ``encoder_type == "brnn"``.
    """

    bidirectional = False

    def __init__(self, num_layers, hidden_size, embeddings, settings: Settings, use_bridge=False):
        dirs = 2 if self.bidirectional else 1
        if hidden_size % dirs:
            raise ValueError(f"sd_brnn needs an even enc_hid_size, got {hidden_size}")
        super().__init__("LSTM", self.bidirectional, num_layers, hidden_size, settings.dropout, embeddings,
                         use_bridge)
        self.settings = settings
        silence_embedding_dropout(embeddings)
        self.rnn = StructDropLSTM(embeddings.embedding_size, hidden_size // dirs, num_layers, batch_first=True,
                                  bidirectional=self.bidirectional, input_dropout=settings.dropout,
                                  generator=mask_generator(settings.seed, 0), **settings.lstm_kwargs())
        self.rnn.site = "encoder"
        self.no_pack_padded_seq = False

    @classmethod
    def from_opt(cls, opt, embeddings):
        with built_from_options():
            return cls(opt.enc_layers, opt.enc_hid_size, embeddings, Settings(opt), opt.bridge)

    def forward(self, src, src_len=None):
        enc_out, (h, c), src_len = super().forward(src, src_len)
        if self.bidirectional:  # (layers * 2, B, H/2) -> (layers, B, H), forward and backward halves
            h, c = (torch.cat([s[0::2], s[1::2]], dim=2) for s in (h, c))
        return enc_out, (h, c), src_len

    def update_dropout(self, dropout, attention_dropout=None):
        self.settings.next_phase(dropout)
        self.rnn.dropout = self.rnn.input_dropout = self.settings.dropout
        self.rnn.recurrent_dropout = self.settings.recurrent_dropout


class StructDropBiRNNEncoder(StructDropRNNEncoder):
    bidirectional = True


def register():
    """Add the encoders to OpenNMT's ``str2enc`` (idempotent); runs when this module is imported."""
    from onmt.encoders import register_encoder, str2enc
    for name, cls in (("sd_rnn", StructDropRNNEncoder), ("sd_brnn", StructDropBiRNNEncoder)):
        if name not in str2enc:
            register_encoder(name)(cls)


register()

"""A plain LSTM that applies given dropout masks with ordinary tensor ops: the reference for every test.

Deliberately naive: one sequence and one step at a time, autograd for the gradients, no compaction.
"""
from __future__ import annotations

import torch


def _mask_at(mask, t, b):
    if mask is None:
        return 1.0
    return mask[t] if mask.dim() == 2 else mask[t, b]


def reference_lstm(params, x, masks, lengths=None, hx=None, num_layers=1, bidirectional=False):
    """Run an LSTM over ``x`` (``[T, B, n]``, time-major) with the masks of ``StructDropLSTM.last_masks``.

    ``params`` maps nn.LSTM parameter names to tensors; ``lengths`` gives each sequence's length (all ``T``
    when ``None``). Returns ``(output [T, B, dirs*H] with zeros past each length, (h_n, c_n))``.
    """
    T, B, _ = x.shape
    dirs = 2 if bidirectional else 1
    H = params["weight_hh_l0"].shape[1]
    lengths = [T] * B if lengths is None else [int(n) for n in lengths]
    masks = masks or {"input": [None] * num_layers, "recurrent": [[None] * dirs] * num_layers}
    h_n, c_n = [], []
    layer_in = x
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = params["weight_ih" + sfx], params["weight_hh" + sfx]
            b = params.get("bias_ih" + sfx, 0) + params.get("bias_hh" + sfx, 0)
            in_mask, rec_mask = masks["input"][layer], masks["recurrent"][layer][d]
            k = layer * dirs + d
            columns, hs, cs = [], [], []
            for s in range(B):
                h = hx[0][k, s] if hx is not None else x.new_zeros(H)
                c = hx[1][k, s] if hx is not None else x.new_zeros(H)
                out = [x.new_zeros(H) for _ in range(T)]
                order = range(lengths[s] - 1, -1, -1) if d else range(lengths[s])
                for t in order:
                    gates = ((layer_in[t, s] * _mask_at(in_mask, t, s)) @ w_ih.t()
                             + (h * _mask_at(rec_mask, t, s)) @ w_hh.t() + b)
                    i, f, g, o = gates.chunk(4)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                    h = torch.sigmoid(o) * torch.tanh(c)
                    out[t] = h
                columns.append(torch.stack(out))
                hs.append(h)
                cs.append(c)
            outs.append(torch.stack(columns, dim=1))
            h_n.append(torch.stack(hs))
            c_n.append(torch.stack(cs))
        layer_in = torch.cat(outs, dim=2)
    return layer_in, (torch.stack(h_n), torch.stack(c_n))

"""One OpenNMT-py training step (encoder, input-feed decoder with attention, generator, summed cross-entropy;
forward and backward), stock against the plugin, side by side: ``python -m onmt_structdrop.tools.nmt_bench --help``.

The defaults are the model of ``recipes/multi30k_deen.yaml`` on a batch of 64 sentences of 15 tokens. Variants run
round-robin in one process (machine noise hits all alike); the table gives medians and ratios to the stock model
(``brnn`` + input-feed ``rnn``, element-wise dropout), which is what a user runs today.

The ideal row is what skipping every dropped unit's work would give with no overhead at all: the stock step minus
``p`` times the time of the products that the non-recurrent dropout can shrink (encoder and decoder input
products, the attention's output layer, the generator; forward, input and weight gradients), timed in the same
round-robin at full width, shaped as the stock model runs them (the encoder's hoisted over the sequence, the
decoder's one step at a time). Everything else in the step (recurrent products, gates, attention scores, softmax
and loss, embeddings) is the same work with or without dropout, so this ratio bounds what skipping dropped work
can give the stock code. The plugin's code also differs from the stock code in work dropout does not touch (a mask
per step rather than a random number per element, the embeddings' product hoisted out of the step loop): the
``bernoulli`` variant, the plugin's code with ordinary masks, measures that difference.
"""
from __future__ import annotations

import argparse
import json

import torch
from torch import nn
from torch.nn import functional as F

from ..measuring import device_name, full_width_products, time_callables
from ..masks import MASK_MODES, check_rate
from ..textfile import write_text

PAD = 1


def _model_opt(args, mode):
    from onmt import opts
    from onmt.utils.parse import ArgumentParser
    opt = ArgumentParser.defaults(opts.model_opts)
    opt.__dict__.update(dict(
        enc_layers=args.layers, dec_layers=args.layers, enc_hid_size=args.hidden, dec_hid_size=args.hidden,
        rnn_type="LSTM", dropout=[args.dropout], sd_recurrent_dropout=[args.recurrent_dropout],
        sd_mask_mode=mode, sd_seed=args.seed, brnn=False, global_attention="general",
        global_attention_function="softmax", coverage_attn=False, copy_attn=False, context_gate=None,
        reuse_copy_attn=False, bridge=False))
    return opt


def build_model(args, mode, device):
    """``(encoder, decoder, generator)``: stock OpenNMT-py modules for ``mode=None``, the plugin's otherwise."""
    from onmt.decoders.decoder import InputFeedRNNDecoder
    from onmt.encoders.rnn_encoder import RNNEncoder
    from onmt.modules import Embeddings

    from ..opennmt.decoders import StructDropInputFeedDecoder
    from ..opennmt.encoders import StructDropBiRNNEncoder
    from ..opennmt.options import Settings

    torch.manual_seed(args.seed)
    E, H, L, p = args.word_vec_size, args.hidden, args.layers, args.dropout
    src_emb = Embeddings(word_vec_size=E, word_vocab_size=args.src_vocab, word_padding_idx=PAD, dropout=p)
    tgt_emb = Embeddings(word_vec_size=E, word_vocab_size=args.tgt_vocab, word_padding_idx=PAD, dropout=p)
    if mode is None:
        encoder = RNNEncoder("LSTM", True, L, H, p, src_emb)
        decoder = InputFeedRNNDecoder("LSTM", True, L, H, dropout=p, embeddings=tgt_emb)
        generator = nn.Linear(H, args.tgt_vocab)
    else:  # sd_brnn hands the decoder states already merged: the decoder sees a unidirectional encoder
        opt = _model_opt(args, mode)
        encoder = StructDropBiRNNEncoder(L, H, src_emb, Settings(opt))
        decoder = StructDropInputFeedDecoder(False, L, H, Settings(opt), embeddings=tgt_emb)
        generator = decoder.build_generator(H, args.tgt_vocab)
    model = nn.ModuleList([encoder, decoder, generator]).to(device)
    with torch.no_grad():
        for weight in model.parameters():  # OpenNMT's param_init 0.1
            weight.uniform_(-0.1, 0.1)
    return model.train()


def training_step(model, src, src_len, tgt):
    """Forward and backward of one batch, as ``onmt_train`` runs it (the generator reads the decoder output viewed
    as ``[B * T, H]``; loss summed over tokens)."""
    encoder, decoder, generator = model
    model.zero_grad(set_to_none=True)
    enc_out, final, src_len = encoder(src, src_len)
    decoder.init_state(src, enc_out, final)
    dec_out, _ = decoder(tgt[:, :-1], enc_out, src_len=src_len)
    logits = generator(dec_out.view(-1, dec_out.shape[-1]))
    loss = F.cross_entropy(logits.float(), tgt[:, 1:, 0].reshape(-1), ignore_index=PAD, reduction="sum")
    loss.backward()


def shrinkable_shapes(args):
    """``(m, n, o, repeats)`` of every product that the non-recurrent dropout can shrink: an ``m x n`` activation
    times an ``n x o`` weight, ``repeats`` times, shaped as the stock model runs them."""
    B, S, T, E, H, V = args.batch, args.src_len, args.tgt_len, args.word_vec_size, args.hidden, args.tgt_vocab
    shapes = []
    for layer in range(args.layers):
        n_in = E if layer == 0 else H
        shapes += [(S * B, n_in, 2 * H, 1)] * 2  # encoder input products (4 gates x H/2), both directions
        shapes.append((B, E + H if layer == 0 else H, 4 * H, T))  # decoder input products, per step
    shapes.append((B, 2 * H, H, T))  # the attention's output layer: its dropped outputs need not be computed
    shapes.append((T * B, H, V, 1))  # the generator
    return shapes


def shrinkable_products(args, device):
    """A callable running every :func:`shrinkable_shapes` product at full width with its input and weight
    gradients."""
    return full_width_products(shrinkable_shapes(args), device, args.seed)


def steps(args, device):
    """``{name: a callable running one training step}``: the stock model's, then each of ``args.modes``', all on
    the same random batch."""
    g = torch.Generator().manual_seed(args.seed)
    B, S, T = args.batch, args.src_len, args.tgt_len
    src = torch.randint(PAD + 1, args.src_vocab, (B, S, 1), generator=g).to(device)
    tgt = torch.randint(PAD + 1, args.tgt_vocab, (B, T + 1, 1), generator=g).to(device)
    src_len = torch.full((B,), S, device=device)
    models = {"stock (brnn + rnn, nn.Dropout)": build_model(args, None, device)}
    for mode in args.modes:
        models[f"sd_brnn + sd_ifrnn, {mode}"] = build_model(args, mode, device)
    return {name: (lambda m=m: training_step(m, src, src_len, tgt)) for name, m in models.items()}


def add_model_args(parser):
    """The model and batch options (the Multi30k model on a batch of 64 sentences of 15 tokens by default)."""
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--word-vec-size", type=int, default=256)
    parser.add_argument("--src-vocab", type=int, default=5860)
    parser.add_argument("--tgt-vocab", type=int, default=4361)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--src-len", type=int, default=15)
    parser.add_argument("--tgt-len", type=int, default=15)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--recurrent-dropout", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)


def check_model_args(parser, args):
    """``parser.error`` for a rate or size :func:`add_model_args`' options cannot build a model with."""
    for name, rate in [("--dropout", args.dropout), ("--recurrent-dropout", args.recurrent_dropout)] + [
            ("--rates", r) for r in getattr(args, "rates", None) or []]:
        try:
            check_rate(rate, name)
        except ValueError as err:
            parser.error(str(err))
    for name in ("layers", "hidden", "word_vec_size", "batch", "src_len", "tgt_len"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("src_vocab", "tgt_vocab"):
        if getattr(args, name) <= PAD + 1:
            parser.error(f"--{name.replace('_', '-')} must be > {PAD + 1}, got {getattr(args, name)}")
    if args.hidden % 2:
        parser.error(f"--hidden must be even (a bidirectional encoder splits it), got {args.hidden}")


def run(args, device):
    """Time the stock step, each mode's step and the shrinkable products; returns the report (see ``--json``)."""
    variants = steps(args, device)
    variants["shrinkable products"] = shrinkable_products(args, device)
    medians, _ = time_callables(variants, args.repeats, args.warmup, device)
    shrinkable = medians.pop("shrinkable products")
    stock = next(iter(medians.values()))
    ideal = stock - args.dropout * shrinkable
    return {"device": device_name(device), "torch": torch.__version__,
            "config": {k: v for k, v in vars(args).items() if k not in ("json", "rates", "plot")},
            "results": [{"variant": name, "ms": ms * 1e3, "vs_stock": stock / ms} for name, ms in medians.items()],
            "shrinkable_ms": shrinkable * 1e3, "shrinkable_share": shrinkable / stock,
            "ideal_ms": ideal * 1e3, "ideal_ratio": stock / ideal}


def print_report(report):
    c = report["config"]
    print(f"device: {report['device']}; torch {report['torch']}; OpenNMT training step, {c['layers']}x{c['hidden']} "
          f"brnn encoder, input-feed decoder, emb {c['word_vec_size']}, vocab {c['src_vocab']}/{c['tgt_vocab']}, "
          f"batch {c['batch']} x {c['src_len']}/{c['tgt_len']} tokens, dropout {c['dropout']}, "
          f"recurrent {c['recurrent_dropout']} (structured only), median of {c['repeats']}")
    width = max(len(r["variant"]) for r in report["results"])
    print(f"{'variant':<{width}}  {'fwd+bwd ms':>10}  {'vs stock':>8}")
    for r in report["results"]:
        print(f"{r['variant']:<{width}}  {r['ms']:>10.1f}  {r['vs_stock']:>7.2f}x")
    print(f"{'ideal (stock - p x shrinkable)':<{width}}  {report['ideal_ms']:>10.1f}  {report['ideal_ratio']:>7.2f}x")
    print(f"products dropout can shrink: {report['shrinkable_ms']:.1f} ms at full width, "
          f"{100 * report['shrinkable_share']:.0f}% of the stock step")


def plot_sweep(reports, path):
    """Speed-up over the stock step against the dropout rate, each variant and the ideal."""
    from ..plotting import save_line_plot
    rates = [r["config"]["dropout"] for r in reports]
    names = [x["variant"] for x in reports[0]["results"][1:]]
    ratio = lambda r, name: next(x["vs_stock"] for x in r["results"] if x["variant"] == name)  # noqa: E731
    series = [(name, rates, [ratio(r, name) for r in reports], {}) for name in names]
    series.append(("ideal (stock - p x shrinkable products)", rates, [r["ideal_ratio"] for r in reports],
                   {"color": "k", "ls": "--", "marker": None}))
    c = reports[0]["config"]
    save_line_plot(path, series, "dropout rate", "training-step speed-up over stock OpenNMT-py",
                   title=f"{reports[0]['device']}: {c['layers']}x{c['hidden']} brnn + input feed, vocab "
                         f"{c['tgt_vocab']}, batch {c['batch']}", hline=1.0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(parser)
    parser.add_argument("--rates", type=float, nargs="+", help="sweep: run once per non-recurrent rate")
    parser.add_argument("--plot", metavar="PNG", help="with --rates: plot the speed-ups against the rate")
    parser.add_argument("--modes", nargs="+", default=["time", "batch", "bernoulli"], choices=MASK_MODES)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    check_model_args(parser, args)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.plot and not args.rates:
        parser.error("--plot needs --rates")
    if args.threads:
        torch.set_num_threads(args.threads)
    reports = []
    for rate in args.rates or [args.dropout]:
        reports.append(run(argparse.Namespace(**{**vars(args), "dropout": rate}), torch.device(args.device)))
        print_report(reports[-1])
        print()
    result = {"sweep": reports} if args.rates else reports[0]
    if args.json:
        write_text(args.json, json.dumps(result, indent=2))
    if args.plot:
        plot_sweep(reports, args.plot)
        print(f"plot: {args.plot}")
    return result


def cli(argv=None):
    """The console command (its entry point passes the return value to ``sys.exit``): returns nothing."""
    main(argv)


if __name__ == "__main__":
    main()

"""The OpenNMT-py encoders, decoders and generator against dense references (float64, same masks), their stock
counterparts in eval mode, and the options' checks."""
import pytest
import torch
from torch.nn import functional as F

onmt = pytest.importorskip("onmt")
from onmt import opts  # noqa: E402
from onmt.decoders.decoder import InputFeedRNNDecoder, StdRNNDecoder  # noqa: E402
from onmt.encoders.rnn_encoder import RNNEncoder  # noqa: E402
from onmt.modules import Embeddings  # noqa: E402
from onmt.utils.parse import ArgumentParser  # noqa: E402

from onmt_structdrop.masks import MASK_MODES  # noqa: E402
from onmt_structdrop.opennmt.decoders import (StructDropInputFeedDecoder, StructDropStdRNNDecoder,  # noqa: E402
                                              StructDropGenerator)
from onmt_structdrop.opennmt.encoders import StructDropBiRNNEncoder, StructDropRNNEncoder  # noqa: E402
from onmt_structdrop.opennmt.options import Settings  # noqa: E402
from onmt_structdrop.reference import reference_lstm  # noqa: E402

B, S, T, E, H, V, L = 3, 6, 5, 4, 6, 11, 2
SRC_LEN = torch.tensor([6, 4, 5])


def make_opt(mode="pool", dropout=0.4, recurrent=0.3, **extra):
    opt = ArgumentParser.defaults(opts.model_opts)
    opt.__dict__.update(dict(dec_layers=L, enc_layers=L, dec_hid_size=H, enc_hid_size=H, rnn_type="LSTM",
                             dropout=[dropout], sd_recurrent_dropout=[recurrent], sd_mask_mode=mode, sd_seed=5,
                             brnn=False, global_attention="general", global_attention_function="softmax",
                             coverage_attn=False, copy_attn=False, context_gate=None, reuse_copy_attn=False,
                             bridge=False))
    opt.__dict__.update(extra)
    return opt


def embeddings(seed=0):
    torch.manual_seed(seed)
    return Embeddings(word_vec_size=E, word_vocab_size=V, word_padding_idx=1, dropout=0.4).double()


def initialised(module, seed=7):
    """OpenNMT builds some layers with skip_init (uninitialised memory) and initialises every parameter
    afterwards (param_init): do the same."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=g, dtype=p.dtype) * 0.6 - 0.3)
    return module


def decoder_inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    enc_out = torch.randn(B, S, H, generator=g, dtype=torch.float64, requires_grad=True)
    final = tuple(torch.randn(L, B, H, generator=g, dtype=torch.float64) for _ in range(2))
    tgt = torch.randint(2, V, (B, T, 1), generator=g)
    return enc_out, final, tgt


def weights(shape, seed):
    return torch.linspace(-1.0, 1.3, int(torch.tensor(shape).prod()), dtype=torch.float64).view(shape).roll(seed)


def step_mask(mask, t, b=None):
    if mask is None:
        return 1.0
    return mask[t] if mask.dim() == 2 else mask[t]  # [n] or [B, n] (bernoulli)


def reference_input_feed(dec, tgt, enc_out, final, masks):
    """The stock input-feed recurrence with the decoder's masks applied by multiplication."""
    emb = dec.embeddings(tgt)
    h, c = list(final[0].unbind(0)), list(final[1].unbind(0))
    feed = enc_out.new_zeros(B, H)
    outs, attns = [], []
    for t in range(T):
        x = torch.cat([emb[:, t] * step_mask(masks["embedding"], t), feed], dim=1)
        for l, cell in enumerate(dec.rnn.layers):
            if l > 0:
                x = x * step_mask(masks["between"][l - 1], t)
            h[l], c[l] = cell(x, (h[l] * step_mask(masks["recurrent"][l], t), c[l]))
            x = h[l]
        out, p = dec.attn(x, enc_out, src_len=SRC_LEN)
        feed = out * step_mask(masks["output"], t)
        outs.append(feed)
        attns.append(p)
    return torch.stack(outs, 1), torch.stack(attns, 1), (torch.stack(h), torch.stack(c))


def grads_of(loss, tensors):
    return torch.autograd.grad(loss, tensors, allow_unused=True)


def check_close(got, want, what):
    for i, (a, b) in enumerate(zip(got, want)):
        if a is None and b is None:
            continue
        a = torch.zeros_like(b) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-10), f"{what}[{i}] differs by {(a - b).abs().max():.3g}"


@pytest.mark.parametrize("mode", MASK_MODES)
@pytest.mark.parametrize("compact", [True, False])
def test_input_feed_decoder_matches_reference(mode, compact):
    opt = make_opt(mode, sd_compact=compact)
    dec = initialised(StructDropInputFeedDecoder.from_opt(opt, embeddings()).double()).train()
    gen = initialised(dec.build_generator(H, 9).double(), 8)
    enc_out, final, tgt = decoder_inputs()
    params = [p for p in dec.parameters()] + list(gen.parameters()) + [enc_out]

    dec.init_state(None, enc_out, final)
    out, attns = dec(tgt, enc_out, src_len=SRC_LEN)
    masks = dec.last_masks
    assert masks["output"] is not None and masks["recurrent"][0] is not None
    logits = gen(out.view(-1, H))
    loss = ((out * weights(out.shape, 1)).sin().sum() + (attns["std"] * weights(attns["std"].shape, 2)).sum()
            + (logits * weights(logits.shape, 3)).cos().sum() + dec.state["hidden"][1].sum())
    got = grads_of(loss, params)

    ref_out, ref_attn, (ref_h, ref_c) = reference_input_feed(dec, tgt, enc_out, final, masks)
    ref_logits = F.linear(ref_out.reshape(-1, H), gen.weight, gen.bias)
    assert torch.allclose(out, ref_out, atol=1e-12) and torch.allclose(attns["std"], ref_attn, atol=1e-12)
    assert torch.allclose(logits, ref_logits, atol=1e-12)
    assert torch.allclose(dec.state["hidden"][0], ref_h, atol=1e-12)
    ref_loss = ((ref_out * weights(out.shape, 1)).sin().sum() + (ref_attn * weights(ref_attn.shape, 2)).sum()
                + (ref_logits * weights(logits.shape, 3)).cos().sum() + ref_c.sum())
    check_close(got, grads_of(ref_loss, params), "grad")
    assert attns["std"].shape == (B, T, S)  # batch first, as beam search reads it


def test_input_feed_decoder_in_eval_is_the_stock_decoder():
    opt = make_opt()
    ours = initialised(StructDropInputFeedDecoder.from_opt(opt, embeddings(0)).double()).eval()
    stock = initialised(InputFeedRNNDecoder.from_opt(opt, embeddings(0)).double()).eval()
    stock.load_state_dict(ours.state_dict())  # same parameter names and shapes
    enc_out, final, tgt = decoder_inputs()
    outs = []
    for dec in (ours, stock):
        dec.init_state(None, enc_out, final)
        outs.append(dec(tgt, enc_out, src_len=SRC_LEN)[0])
    assert torch.equal(outs[0], outs[1])


def test_input_feed_decoder_keeps_the_input_feed_across_calls_and_coverage():
    opt = make_opt("time", coverage_attn=True)
    dec = initialised(StructDropInputFeedDecoder.from_opt(opt, embeddings()).double()).train()
    enc_out, final, tgt = decoder_inputs()
    dec.init_state(None, enc_out, final)
    out1, attns = dec(tgt[:, :2], enc_out, src_len=SRC_LEN)
    assert attns["coverage"].shape == (B, 2, S) and dec.state["coverage"].shape == (1, B, S)
    assert torch.equal(dec.state["input_feed"][0], out1[:, -1])
    out2, _ = dec(tgt[:, 2:], enc_out, src_len=SRC_LEN)  # truncated BPTT: the second chunk starts from state
    assert out2.shape == (B, T - 2, H)


@pytest.mark.parametrize("mode", ["time", "batch", "bernoulli"])
def test_std_rnn_decoder_matches_reference(mode):
    opt = make_opt(mode)
    dec = initialised(StructDropStdRNNDecoder.from_opt(opt, embeddings()).double()).train()
    gen = initialised(dec.build_generator(H, 9).double(), 8)
    enc_out, final, tgt = decoder_inputs()
    params = list(dec.parameters()) + list(gen.parameters()) + [enc_out]
    dec.init_state(None, enc_out, final)
    out, attns = dec(tgt, enc_out, src_len=SRC_LEN)
    logits = gen(out.view(-1, H))
    loss = (out * weights(out.shape, 4)).sin().sum() + (logits * weights(logits.shape, 5)).cos().sum()
    got = grads_of(loss, params)

    emb = dec.embeddings(tgt)
    named = dict(dec.rnn.named_parameters())
    rnn_out, _ = reference_lstm(named, emb.transpose(0, 1), dec.rnn.last_masks, hx=final, num_layers=L)
    ref, _ = dec.attn(rnn_out.transpose(0, 1).contiguous(), enc_out, src_len=SRC_LEN)
    mask = dec.dropout.last_mask
    ref = ref * (mask.dense(ref.dtype).unsqueeze(0) if hasattr(mask, "dense") else
                 (mask.unsqueeze(0) if mask.dim() == 2 else mask.transpose(0, 1)))
    ref_logits = F.linear(ref.reshape(-1, H), gen.weight, gen.bias)
    assert torch.allclose(out, ref, atol=1e-12) and torch.allclose(logits, ref_logits, atol=1e-12)
    ref_loss = (ref * weights(out.shape, 4)).sin().sum() + (ref_logits * weights(logits.shape, 5)).cos().sum()
    check_close(got, grads_of(ref_loss, params), "grad")


def test_std_rnn_decoder_in_eval_is_the_stock_decoder():
    opt = make_opt(input_feed=0)
    ours = initialised(StructDropStdRNNDecoder.from_opt(opt, embeddings(0)).double()).eval()
    stock = initialised(StdRNNDecoder.from_opt(opt, embeddings(0)).double()).eval()
    stock.load_state_dict(ours.state_dict())
    enc_out, final, tgt = decoder_inputs()
    outs = []
    for dec in (ours, stock):
        dec.init_state(None, enc_out, final)
        outs.append(dec(tgt, enc_out, src_len=SRC_LEN)[0])
    assert torch.allclose(outs[0], outs[1], atol=1e-12)


def test_generator_compacts_only_the_decoders_own_output():
    opt = make_opt("batch")
    dec = initialised(StructDropInputFeedDecoder.from_opt(opt, embeddings()).double()).train()
    gen = initialised(dec.build_generator(H, 9).double(), 8)
    assert isinstance(gen, StructDropGenerator) and set(dict(gen.named_parameters())) == {"weight", "bias"}
    enc_out, final, tgt = decoder_inputs()
    dec.init_state(None, enc_out, final)
    out, _ = dec(tgt, enc_out, src_len=SRC_LEN)
    x = out.view(-1, H)
    assert gen.output_mask.lookup(x) is not None
    assert gen.output_mask.lookup(out.detach().clone().view(-1, H)) is None  # another tensor: dense product
    assert gen.output_mask.lookup(out[:, 1:].reshape(-1, H)) is None  # a truncated window: dense product
    dec.eval()
    dec.init_state(None, enc_out, final)
    dec(tgt, enc_out, src_len=SRC_LEN)
    assert gen.output_mask.lookup(x) is None  # cleared by every decoder call


@pytest.mark.parametrize("cls, stock_brnn", [(StructDropRNNEncoder, False), (StructDropBiRNNEncoder, True)])
def test_encoder_in_eval_is_the_stock_encoder_with_merged_states(cls, stock_brnn):
    opt = make_opt()
    ours = initialised(cls.from_opt(opt, embeddings(0)).double()).eval()
    stock = initialised(RNNEncoder("LSTM", stock_brnn, L, H, 0.4, embeddings(0).double()).double()).eval()
    stock.load_state_dict(ours.state_dict())
    src = torch.randint(2, V, (B, S, 1), generator=torch.Generator().manual_seed(3))
    out, (h, c), _ = ours(src, SRC_LEN)
    ref_out, (ref_h, ref_c), _ = stock(src, SRC_LEN)
    if stock_brnn:  # what the stock decoder does for encoder_type brnn
        ref_h, ref_c = (torch.cat([s[0::2], s[1::2]], 2) for s in (ref_h, ref_c))
    assert torch.allclose(out, ref_out, atol=1e-12)
    assert h.shape == (L, B, H) and torch.allclose(h, ref_h, atol=1e-12) and torch.allclose(c, ref_c, atol=1e-12)


@pytest.mark.parametrize("mode", ["time", "pool", "bernoulli"])
def test_encoder_trains_with_structured_dropout_and_silenced_embedding_dropout(mode):
    enc = initialised(StructDropBiRNNEncoder.from_opt(make_opt(mode), embeddings()).double()).train()
    assert enc.embeddings.dropout_p == 0.0 and enc.rnn.input_dropout == pytest.approx(0.4)
    src = torch.randint(2, V, (B, S, 1), generator=torch.Generator().manual_seed(4))
    out, (h, c), _ = enc(src, SRC_LEN)
    assert out.shape == (B, S, H) and h.shape == (L, B, H)
    masks = enc.rnn.last_masks
    assert masks["input"][0] is not None and masks["recurrent"][0][0] is not None
    params = list(enc.parameters())
    got = grads_of((out * weights(out.shape, 1)).sin().sum() + (h * c).sum(), params)

    # the stock parts (embeddings without dropout, lengths) around the float64 reference with the same masks
    named = dict(enc.rnn.named_parameters())
    ref, (ref_h, ref_c) = reference_lstm(named, enc.embeddings(src).transpose(0, 1), masks, SRC_LEN.tolist(),
                                         num_layers=L, bidirectional=True)
    ref = ref.transpose(0, 1)
    ref_h, ref_c = (torch.cat([s[0::2], s[1::2]], 2) for s in (ref_h, ref_c))  # directions merged, as returned
    assert torch.allclose(out, ref, atol=1e-12) and torch.allclose(h, ref_h, atol=1e-12)
    check_close(got, grads_of((ref * weights(out.shape, 1)).sin().sum() + (ref_h * ref_c).sum(), params), "grad")


def test_update_dropout_follows_the_schedule():
    opt = make_opt(dropout=0.3, recurrent=0.3)
    opt.dropout, opt.sd_recurrent_dropout = [0.3, 0.1], [0.3, 0.0]
    dec = StructDropInputFeedDecoder.from_opt(opt, embeddings())
    enc = StructDropRNNEncoder.from_opt(opt, embeddings())
    dec.update_dropout(0.1)
    enc.update_dropout(0.1)
    assert dec.settings.dropout == 0.1 and dec.settings.recurrent_dropout == 0.0
    assert enc.rnn.dropout == 0.1 and enc.rnn.recurrent_dropout == 0.0 and dec.embeddings.dropout_p == 0.0


@pytest.mark.parametrize("line, message", [
    ("sd_recurrent_dropout: [1.5]", "sd_recurrent_dropout must be in [0, 1), got 1.5"),
    ("sd_recurrent_dropout: [abc]", "not a number: 'abc'"),
    ("sd_mask_mode: rows", "invalid choice: 'rows'"),
    ("sd_compact: maybe", "expected true or false, got 'maybe'"),
    ("sd_pool_size: -2", "must be >= 0, got -2"),
])
def test_bad_options_fail_at_parse_time(line, message, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(f"encoder_type: sd_brnn\n{line}\n")
    parser = ArgumentParser()
    opts.train_opts(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["-config", str(config)])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("where", ["yaml", "command line"])
@pytest.mark.parametrize("name, hint", [
    ("sd_recurent_dropout", "did you mean -sd_recurrent_dropout?"),
    ("sd_mask_mod", "did you mean -sd_mask_mode?"),  # a prefix: argparse alone would take it for sd_mask_mode
    ("sd_frobnicate", "the structured-dropout options are -sd_compact, "),
])
def test_unknown_or_abbreviated_plugin_options_are_refused(where, name, hint, tmp_path, capsys):
    value = "0.3" if "dropout" in name else "time"
    config = tmp_path / "run.yaml"
    required = "src_vocab: vocab.src\ndata:\n  corpus_1:\n    path_src: a.src\n    path_tgt: a.tgt\n"
    config.write_text(required + "encoder_type: sd_brnn\n" + (f"{name}: {value}\n" if where == "yaml" else ""))
    args = ["-config", str(config)] + ([f"-{name}", value] if where == "command line" else [])
    parser = ArgumentParser()
    opts.train_opts(parser)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_known_args(args)  # what onmt_train calls
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"unknown option -{name}" in err and hint in err
    config.write_text(required + "encoder_type: sd_brnn\nsd_seed: 3\n")  # the exact names still parse, each way
    parser = ArgumentParser()
    opts.train_opts(parser)
    opt, _ = parser.parse_known_args(["-config", str(config), "-sd_mask_mode", "batch", "--sd_recurrent_dropout=0.2"])
    assert opt.sd_seed == 3
    assert opt.sd_mask_mode == "batch" and opt.sd_recurrent_dropout == [0.2]


@pytest.mark.parametrize("config, args, message", [
    ("encoder_type: sd_brnn\n", ["--sd-mask-mode", "batch"], "unknown option --sd-mask-mode (on the command line or "
                                                             "as a config key): did you mean -sd_mask_mode?"),
    ("encoder_type: sd_brnn\nSD_MASK_MODE: batch\n", [], "unknown option --SD_MASK_MODE (on the command line or as a "
                                                        "config key): did you mean -sd_mask_mode?"),
    ("encoder_type: brnn\nsd_mask_mode: batch\n", ["-sd_seed", "3"],
     "-sd_mask_mode, -sd_seed apply to the structured-dropout models only, but this one is brnn + rnn: set "
     "encoder_type sd_brnn or sd_rnn and decoder_type sd_ifrnn or sd_rnn, or remove them"),
])
def test_options_that_would_do_nothing_are_refused(config, args, message, tmp_path, capsys):
    """Other spellings of the plugin's options, and its options on a stock model, used to be silently ignored."""
    path = tmp_path / "run.yaml"
    path.write_text("src_vocab: vocab.src\ndata:\n  corpus_1:\n    path_src: a.src\n    path_tgt: a.tgt\n" + config)
    parser = ArgumentParser()
    opts.train_opts(parser)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_known_args(["-config", str(path), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("lines, message", [
    ("decoder_type: sd_rnn\ncopy_attn: true\n", "sd_rnn, like OpenNMT's rnn decoder without input feed, supports "
                                                "neither copy_attn nor coverage_attn; use sd_ifrnn"),
    ("decoder_type: sd_ifrnn\ncontext_gate: both\n", "sd_ifrnn does not support context_gate"),
    ("rnn_type: GRU\n", "rnn_type must be LSTM, got 'GRU'"),
    ("dropout: [0.3]\nsd_recurrent_dropout: [0.1, 0.2, 0.3]\n", "needs one value or one per dropout entry (1)"),
    ("dropout: [1.5]\n", "dropout must be in [0, 1), got 1.5"),
    ("decoder_type: sd_lstm\n", "unknown decoder_type 'sd_lstm'; the structured-dropout ones are sd_rnn, sd_ifrnn"),
])
def test_bad_combinations_stop_onmt_train_at_start_up_in_one_line(lines, message, tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("src_vocab: v.src\ndata:\n  corpus_1:\n    path_src: a\n    path_tgt: b\n"
                      "encoder_type: sd_brnn\n" + lines)
    parser = ArgumentParser()
    opts.train_opts(parser)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_known_args(["-config", str(config)])  # what onmt_train calls
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and message in err


def test_settings_reject_mismatched_schedules_and_other_cells():
    with pytest.raises(ValueError, match="one value or one per dropout entry"):
        Settings(make_opt(dropout=0.3, recurrent=0.3, sd_recurrent_dropout=[0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="rnn_type must be LSTM"):
        Settings(make_opt(rnn_type="GRU"))
    with pytest.raises(ValueError, match="does not support context_gate"):
        StructDropInputFeedDecoder.from_opt(make_opt(context_gate="both", decoder_type="sd_ifrnn"), embeddings())


def test_unknown_encoder_type_lists_the_available_ones():
    from onmt.model_builder import build_encoder
    with pytest.raises(ValueError, match=r"unknown encoder_type 'sd_lstm'; available: .*sd_brnn, sd_rnn"):
        build_encoder(make_opt(encoder_type="sd_lstm", model_type="text"), embeddings())


def test_a_missing_data_file_is_named():
    with pytest.raises(OSError, match="corpus_1/path_src file not found: 'nowhere.src'"):
        ArgumentParser._validate_file("nowhere.src", "corpus_1/path_src")


def test_the_dropout_report_logs_a_line_and_tensorboard_scalars():
    from onmt_structdrop import StructDropLSTM
    from onmt_structdrop.accounting import tally
    from onmt_structdrop.opennmt.report import report

    class Writer:
        def __init__(self):
            self.scalars = {}

        def add_scalar(self, tag, value, step):
            self.scalars[tag] = (value, step)

    tally.take()
    lines, writer = [], Writer()
    report(5, lambda *args: lines.append(args[0] % args[1:]), writer)
    assert lines == [] and writer.scalars == {}  # nothing counted: no line
    enabled, tally.enabled = tally.enabled, True
    try:
        model = StructDropLSTM(8, 6, dropout=0.5, input_dropout=0.5, mask_mode="time")
        model.site = "encoder"
        model(torch.randn(4, 3, 8))[0].sum().backward()
    finally:
        tally.enabled = enabled
    report(10, lambda *args: lines.append(args[0] % args[1:]), writer)
    # 4 of 8 inputs kept: the input product (8 x 24) halves, the recurrent one (6 x 24) is whole
    assert lines[0].startswith("Structured dropout: 28.6% of LSTM and generator multiply-adds skipped; keep rate: "
                               "encoder input 0.500, encoder recurrent 1.000; backend calls: ")
    assert writer.scalars["structdrop/skipped_share"] == (pytest.approx(2 / 7), 10)
    assert writer.scalars["structdrop/keep_rate/encoder_input"] == (0.5, 10)

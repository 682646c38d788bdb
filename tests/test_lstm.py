"""StructDropLSTM against the dense reference (float64, same masks), and its nn.LSTM contract."""
import itertools

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from onmt_structdrop import MASK_MODES, StructDropLSTM
from onmt_structdrop.masks import PATTERN_MODES
from onmt_structdrop.reference import reference_lstm

T, B, N_IN, H = 5, 3, 4, 5
LENGTHS = [3, 5, 2]  # unsorted on purpose: PackedSequence sorting must be undone


def _inputs(batch_first, bidirectional, layers, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, N_IN, generator=g, dtype=torch.float64)
    states = layers * (2 if bidirectional else 1)
    h0 = torch.randn(states, B, H, generator=g, dtype=torch.float64)
    c0 = torch.randn(states, B, H, generator=g, dtype=torch.float64)
    return x, h0, c0


def _loss(y, h, c):
    # weights every output differently so that a swapped or dropped gradient cannot cancel out
    w = torch.linspace(0.5, 1.5, y.numel(), dtype=y.dtype).view_as(y)
    return (y * w).sin().sum() + h.cos().sum() + (c * 0.7).sum()


def _run_module(model, x, h0, c0, batch_first, packed, masks=None):
    x, h0, c0 = (t.clone().requires_grad_() for t in (x, h0, c0))
    inp = x.transpose(0, 1) if batch_first else x
    if packed:
        inp = pack_padded_sequence(inp, LENGTHS, batch_first=batch_first, enforce_sorted=False)
    out, (h, c) = model(inp, (h0, c0)) if masks is None else model(inp, (h0, c0), masks=masks)
    if packed:
        out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=T)
    y = out.transpose(0, 1) if batch_first else out
    _loss(y, h, c).backward()
    grads = [x.grad, h0.grad, c0.grad] + [p.grad for _, p in model.named_parameters()]
    return [y.detach(), h.detach(), c.detach()], grads


def _run_reference(model, x, h0, c0, packed, masks):
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    x, h0, c0 = (t.clone().requires_grad_() for t in (x, h0, c0))
    y, (h, c) = reference_lstm(params, x, masks, LENGTHS if packed else None, (h0, c0),
                               model.num_layers, model.bidirectional)
    _loss(y, h, c).backward()
    grads = [x.grad, h0.grad, c0.grad] + [params[k].grad for k, _ in model.named_parameters()]
    return [y.detach(), h.detach(), c.detach()], grads


def _assert_close(actual, expected):
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a is not None and e is not None, f"tensor {i} missing"
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10, msg=lambda m, i=i: f"tensor {i}: {m}")


CASES = list(itertools.product(MASK_MODES, [0.0, 0.3, 0.5, 0.8], [False, True], [1, 2, 3]))


@pytest.mark.parametrize("batch_first,packed", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("mode,p,bidirectional,layers", CASES)
def test_matches_dense_reference(mode, p, bidirectional, layers, batch_first, packed):
    torch.manual_seed(layers * 100 + int(p * 10))
    model = StructDropLSTM(N_IN, H, layers, batch_first=batch_first, dropout=p, recurrent_dropout=p,
                           input_dropout=p, bidirectional=bidirectional, mask_mode=mode,
                           pool_size=3).double()
    x, h0, c0 = _inputs(batch_first, bidirectional, layers)
    outs, grads = _run_module(model, x, h0, c0, batch_first, packed)
    masks = model.last_masks
    if p > 0:  # the masks really drop something, so the test exercises the compaction
        # (rbd/tbd keep every unit at steps that draw dp = 1: some mask must still drop)
        drops = [m is not None and (m == 0).any() for m in masks["input"]]
        assert all(drops) if mode not in PATTERN_MODES else any(drops) or any(
            (m == 0).any() for r in masks["recurrent"] for m in r)
        assert all(m is not None for r in masks["recurrent"] for m in r)
    ref_outs, ref_grads = _run_reference(model, x, h0, c0, packed, masks)
    _assert_close(outs, ref_outs)
    _assert_close(grads, ref_grads)


@pytest.mark.parametrize("rates", [(0.0, 0.5, 0.0), (0.4, 0.0, 0.0), (0.0, 0.0, 0.6), (0.3, 0.0, 0.5)])
@pytest.mark.parametrize("mode", MASK_MODES)
def test_some_dropouts_off_matches_dense_reference(mode, rates):
    torch.manual_seed(3)
    input_dropout, dropout, recurrent_dropout = rates
    model = StructDropLSTM(N_IN, H, 2, dropout=dropout, recurrent_dropout=recurrent_dropout,
                           input_dropout=input_dropout, bidirectional=True, mask_mode=mode).double()
    x, h0, c0 = _inputs(False, True, 2)
    outs, grads = _run_module(model, x, h0, c0, False, True)
    assert sum(m is None for m in model.last_masks["input"]) == (input_dropout == 0) + (dropout == 0)
    ref_outs, ref_grads = _run_reference(model, x, h0, c0, True, model.last_masks)
    _assert_close(outs, ref_outs)
    _assert_close(grads, ref_grads)


@pytest.mark.parametrize("mode", MASK_MODES)
def test_dense_masks_give_the_same_result(mode):
    torch.manual_seed(1)
    model = StructDropLSTM(N_IN, H, 2, dropout=0.5, recurrent_dropout=0.5, input_dropout=0.3,
                           bidirectional=True, mask_mode=mode).double()
    x, h0, c0 = _inputs(False, True, 2)
    outs, grads = _run_module(model, x, h0, c0, False, True)
    masks = model.last_masks
    model.compact = False
    for p in model.parameters():
        p.grad = None
    outs2, grads2 = _run_module(model, x, h0, c0, False, True, masks=masks)
    _assert_close(outs, outs2)
    _assert_close(grads, grads2)


def test_explicit_masks_with_uneven_values_and_counts():
    torch.manual_seed(2)
    model = StructDropLSTM(N_IN, H, 2, bidirectional=True).double()
    g = torch.Generator().manual_seed(3)
    rand_mask = lambda n: torch.rand(T, n, generator=g, dtype=torch.float64) * (  # noqa: E731
        torch.rand(T, n, generator=g) > 0.5)
    masks = {"input": [rand_mask(N_IN), rand_mask(2 * H)],
             "recurrent": [[rand_mask(H), None], [torch.rand(T, B, H, generator=g, dtype=torch.float64),
                                                  rand_mask(H)]]}
    masks["input"][0][1] = 0  # a step that drops every unit
    x, h0, c0 = _inputs(False, True, 2)
    outs, grads = _run_module(model, x, h0, c0, False, False, masks=masks)
    ref_outs, ref_grads = _run_reference(model, x, h0, c0, False, masks)
    _assert_close(outs, ref_outs)
    _assert_close(grads, ref_grads)


def test_replaying_last_masks_reproduces_the_output():
    model = StructDropLSTM(N_IN, H, 2, dropout=0.5, recurrent_dropout=0.4, mask_mode="pool").double()
    x, h0, c0 = _inputs(False, False, 2)
    y1, _ = model(x, (h0, c0))
    y2, _ = model(x, (h0, c0), masks=model.last_masks)
    y3, _ = model(x, (h0, c0))
    torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(y1, y3)


def test_last_masks_are_made_dense_when_first_read_and_the_record_pickles():
    import pickle
    model = StructDropLSTM(N_IN, H, 2, dropout=0.5, recurrent_dropout=0.4, input_dropout=0.3)
    model(torch.randn(T, B, N_IN))
    clone = pickle.loads(pickle.dumps(model))  # the record as drawn, not yet made dense
    masks = model.last_masks
    assert masks is model.last_masks  # made dense once
    assert [tuple(m.shape) for m in masks["input"]] == [(T, N_IN), (T, H)]
    assert all(tuple(m.shape) == (T, H) and m.dtype == torch.float32 for r in masks["recurrent"] for m in r)
    rec = masks["recurrent"][0][0]
    k = round(0.6 * H)
    assert ((rec > 0).sum(1) == k).all() and torch.allclose(rec[rec > 0], torch.tensor(H / k))
    for a, b in zip(clone.last_masks["input"], masks["input"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_generator_makes_masks_reproducible():
    def run(seed):
        model = StructDropLSTM(N_IN, H, 2, dropout=0.5, recurrent_dropout=0.5,
                               generator=torch.Generator().manual_seed(seed))
        model(torch.randn(T, B, N_IN))
        return model.last_masks
    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a["input"][1], b["input"][1]) and torch.equal(a["recurrent"][0][0], b["recurrent"][0][0])
    assert not torch.equal(a["input"][1], c["input"][1])


def _pair(bidirectional, layers, batch_first=False, bias=True):
    torch.manual_seed(4)
    ref = nn.LSTM(N_IN, H, layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional,
                  dropout=0.5 if layers > 1 else 0.0).double()
    ours = StructDropLSTM(N_IN, H, layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional,
                          dropout=0.5, recurrent_dropout=0.5).double()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("bidirectional,layers,batch_first,bias",
                         [(False, 1, False, True), (True, 2, True, True), (True, 3, False, False)])
def test_eval_equals_nn_lstm(bidirectional, layers, batch_first, bias):
    ref, ours = _pair(bidirectional, layers, batch_first, bias)
    ref.eval(), ours.eval()
    x, h0, c0 = _inputs(batch_first, bidirectional, layers)
    inp = x.transpose(0, 1) if batch_first else x
    for args in [(inp,), (inp, (h0, c0))]:
        y_ref, (h_ref, c_ref) = ref(*args)
        y, (h, c) = ours(*args)
        _assert_close([y, h, c], [y_ref, h_ref, c_ref])
    packed = pack_padded_sequence(inp, LENGTHS, batch_first=batch_first, enforce_sorted=False)
    (y_ref, (h_ref, c_ref)), (y, (h, c)) = ref(packed, (h0, c0)), ours(packed, (h0, c0))
    assert torch.equal(y.batch_sizes, y_ref.batch_sizes)
    assert torch.equal(y.unsorted_indices, y_ref.unsorted_indices)
    _assert_close([y.data, h, c], [y_ref.data, h_ref, c_ref])


def test_without_dropout_training_matches_nn_lstm_with_gradients():
    torch.manual_seed(5)
    ref = nn.LSTM(N_IN, H, 2, bidirectional=True).double()
    ours = StructDropLSTM(N_IN, H, 2, bidirectional=True).double()
    ours.load_state_dict(ref.state_dict())
    x, h0, c0 = _inputs(False, True, 2)
    outs, grads = _run_module(ours, x, h0, c0, False, True)
    outs_ref, grads_ref = _run_module(ref, x, h0, c0, False, True)
    _assert_close(outs, outs_ref)
    _assert_close(grads, grads_ref)


def test_state_dict_round_trips_both_ways():
    ref, ours = _pair(True, 2)
    assert [(k, v.shape) for k, v in ref.state_dict().items()] == [(k, v.shape) for k, v in
                                                                   ours.state_dict().items()]
    back = nn.LSTM(N_IN, H, 2, bidirectional=True).double()
    back.load_state_dict(ours.state_dict())
    for (k, a), (_, b) in zip(back.state_dict().items(), ref.state_dict().items()):
        assert torch.equal(a, b), k


def test_nn_lstm_helpers_exist():
    ref, ours = _pair(True, 2)
    ours.flatten_parameters()
    assert [[w.shape for w in layer] for layer in ours.all_weights] == [[w.shape for w in layer]
                                                                      for layer in ref.all_weights]


def test_unbatched_input():
    ref, ours = _pair(False, 2)
    ref.eval(), ours.eval()
    x = torch.randn(T, N_IN, dtype=torch.float64)
    y_ref, (h_ref, c_ref) = ref(x)
    y, (h, c) = ours(x)
    assert y.shape == (T, H) and h.shape == (2, H)
    _assert_close([y, h, c], [y_ref, h_ref, c_ref])


def test_float32_batch_first_training_step_matches_the_reference():
    torch.manual_seed(3)
    model = StructDropLSTM(8, 16, 2, dropout=0.5, recurrent_dropout=0.5, input_dropout=0.2,
                           mask_mode="pool", batch_first=True)
    x = torch.randn(4, 7, 8, requires_grad=True)
    y, (h, c) = model(x)
    (y.square().mean() + h.mean()).backward()
    assert y.shape == (4, 7, 16) and h.shape == (2, 4, 16)
    params = {k: v.detach().double().requires_grad_() for k, v in model.named_parameters()}
    masks = {"input": [m.double() for m in model.last_masks["input"]],
             "recurrent": [[m.double() for m in r] for r in model.last_masks["recurrent"]]}
    xr = x.detach().double().transpose(0, 1).requires_grad_()
    yr, (hr, _) = reference_lstm(params, xr, masks, num_layers=2)
    (yr.square().mean() + hr.mean()).backward()
    torch.testing.assert_close(y.double(), yr.transpose(0, 1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.double(), xr.grad.transpose(0, 1), rtol=1e-4, atol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad.double(), params[name].grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("mode", ["time", "batch", "bernoulli"])
def test_training_with_input_and_between_layer_dropout_matches_nn_lstm_on_the_masked_inputs(mode):
    """Where nn.LSTM can apply the same masks (every mask but the recurrent one), its own kernel on the masked
    inputs, a layer at a time, gives the structured layer's outputs and gradients: the stock computation, in
    training, with dropout."""
    torch.manual_seed(4)
    ours = StructDropLSTM(N_IN, H, 2, bidirectional=True, input_dropout=0.4, dropout=0.5, mask_mode=mode).double()
    stock = [nn.LSTM(N_IN if l == 0 else 2 * H, H, bidirectional=True).double() for l in range(2)]
    for l, layer in enumerate(stock):
        layer.load_state_dict({k.replace(f"_l{l}", "_l0"): v for k, v in ours.state_dict().items() if f"_l{l}" in k})
    x, h0, c0 = _inputs(False, True, 2)
    outs, grads = _run_module(ours, x, h0, c0, False, False)
    masks = ours.last_masks["input"]

    x = x.clone().requires_grad_()
    h0s, c0s = (s.clone().requires_grad_() for s in (h0, c0))
    layer_in, h_n, c_n = x, [], []
    for l, layer in enumerate(stock):
        m = masks[l]
        layer_in, (h, c) = layer(layer_in * (m.unsqueeze(1) if m.dim() == 2 else m), (h0s[2 * l:2 * l + 2],
                                                                                     c0s[2 * l:2 * l + 2]))
        h_n.append(h)
        c_n.append(c)
    h_n, c_n = torch.cat(h_n), torch.cat(c_n)
    _loss(layer_in, h_n, c_n).backward()
    _assert_close(outs, [layer_in.detach(), h_n.detach(), c_n.detach()])
    stock_grads = {k.replace("_l0", f"_l{l}"): p.grad for l, layer in enumerate(stock)
                   for k, p in layer.named_parameters()}
    _assert_close(grads, [x.grad, h0s.grad, c0s.grad] + [stock_grads[k] for k, _ in ours.named_parameters()])


# ---- bad input -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,match", [
    (dict(dropout=1.0), "dropout must be in \\[0, 1\\), got 1.0"),
    (dict(dropout=-0.1), "got -0.1"),
    (dict(recurrent_dropout=1.5), "recurrent_dropout must be in \\[0, 1\\), got 1.5"),
    (dict(input_dropout=float("nan")), "input_dropout"),
    (dict(dropout="0.5"), "dropout must be a number"),
    (dict(mask_mode="tiles"), "mask_mode must be one of .*'tiles'"),
    (dict(pool_size=0), "pool_size must be a positive integer or None, got 0"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        StructDropLSTM(4, 5, **kwargs)


@pytest.mark.parametrize("args,match", [
    ((4.5, 5), "input_size must be an integer >= 1, got 4.5"),
    ((4, 0), "hidden_size must be an integer >= 1, got 0"),
    ((4, 5, "2"), "num_layers must be an integer >= 1, got '2'"),
])
def test_bad_sizes(args, match):
    with pytest.raises(ValueError, match=match):
        StructDropLSTM(*args)


def test_bad_forward_inputs():
    model = StructDropLSTM(N_IN, H, 2, dropout=0.5)
    with pytest.raises(ValueError, match="2-D or 3-D input .* got shape \\(2, 3, 4, 5\\)"):
        model(torch.randn(2, 3, 4, 5))
    with pytest.raises(ValueError, match="input has 7 features, expected input_size=4"):
        model(torch.randn(T, B, 7))
    with pytest.raises(TypeError, match="input dtype torch.float64 does not match .* torch.float32"):
        model(torch.randn(T, B, N_IN, dtype=torch.float64))
    with pytest.raises(ValueError, match="h0 must have shape \\(2, 3, 5\\), got \\(1, 3, 5\\)"):
        model(torch.randn(T, B, N_IN), (torch.zeros(1, B, H), torch.zeros(2, B, H)))
    with pytest.raises(ValueError, match="c0 must have shape"):
        model(torch.randn(T, B, N_IN), (torch.zeros(2, B, H), torch.zeros(2, B, H + 1)))
    with pytest.raises(TypeError, match="c0 dtype torch.float64"):
        model(torch.randn(T, B, N_IN), (torch.zeros(2, B, H), torch.zeros(2, B, H, dtype=torch.float64)))
    good = model.sample_masks(T, B)
    bad = {"input": [torch.ones(T, N_IN), torch.ones(T + 1, H)], "recurrent": good["recurrent"]}
    with pytest.raises(ValueError, match="masks\\['input'\\]\\[1\\] must have shape \\(5, 5\\) or \\(5, 3, 5\\), got "
                                         "\\(6, 5\\)"):
        model(torch.randn(T, B, N_IN), masks=bad)
    with pytest.raises(ValueError, match="2 input masks and 2 x 1 recurrent masks"):
        model(torch.randn(T, B, N_IN), masks={"input": [None], "recurrent": [[None], [None]]})


# ---- nn.LSTM's contract at its edges ------------------------------------------------------------------------
def test_empty_batch_behaves_as_nn_lstm():
    ref, ours = _pair(True, 2)
    for model in (ref, ours):
        model.train()
    x = torch.randn(T, 0, N_IN, dtype=torch.float64, requires_grad=True)
    (y_ref, (h_ref, _)), (y, (h, c)) = ref(x), ours(x)
    assert y.shape == y_ref.shape == (T, 0, 2 * H) and h.shape == h_ref.shape == (4, 0, H)
    (y.sum() + h.sum() + c.sum()).backward()
    assert x.grad.shape == x.shape


def test_empty_sequence_is_refused_as_nn_lstm_refuses_it():
    ref, ours = _pair(False, 1)
    for model in (ref, ours):
        with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0"):
            model(torch.randn(0, B, N_IN, dtype=torch.float64))


def test_proj_size_zero_is_accepted_and_any_other_refused():
    assert StructDropLSTM(N_IN, H, proj_size=0).proj_size == 0
    with pytest.raises(ValueError, match="StructDropLSTM has no proj_size \\(got 3\\)"):
        StructDropLSTM(N_IN, H, proj_size=3)


@pytest.mark.parametrize("bad,match", [
    (torch.full((T, N_IN), float("nan")), "finite non-negative"),
    (-torch.ones(T, N_IN), "finite non-negative"),
    (torch.ones(T, N_IN, dtype=torch.long), "finite non-negative"),
])
def test_explicit_masks_are_checked(bad, match):
    model = StructDropLSTM(N_IN, H, 1, input_dropout=0.5)
    masks = {"input": [bad], "recurrent": [[None]]}
    with pytest.raises(ValueError, match=f"masks\\['input'\\]\\[0\\] must hold {match}"):
        model(torch.randn(T, B, N_IN), masks=masks)


@pytest.mark.parametrize("backend, training, p", [("aot_eager", False, 0.5), ("aot_eager", True, 0.0),
                                                   ("aot_eager", True, 0.5), ("inductor", False, 0.0)])
def test_torch_compile_gives_the_eager_results(backend, training, p):
    """As nn.LSTM compiles: in eval() and without dropout (nn.LSTM's own kernel, which traced would not compile),
    and in training with dropout (the same masks given to both)."""
    torch.manual_seed(0)
    model = StructDropLSTM(6, 5, num_layers=2, dropout=p, recurrent_dropout=p, bidirectional=True).train(training)
    x = torch.randn(4, 3, 6, requires_grad=training)
    masks = model.sample_masks(4, 3) if training and p else None
    compiled = torch.compile(model, backend=backend)
    (out, (h, c)), (want, (h_want, c_want)) = compiled(x, masks=masks), model(x, masks=masks)
    for actual, expected in [(out, want), (h, h_want), (c, c_want)]:
        torch.testing.assert_close(actual, expected)
    if training:
        grad, = torch.autograd.grad(out.sum(), x)
        want_grad, = torch.autograd.grad(want.sum(), x)
        torch.testing.assert_close(grad, want_grad)

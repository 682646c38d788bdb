"""Property-based checks (hypothesis): random shapes, rates, modes, dtypes, packed lengths, layer counts and
directions on each available backend, outputs and gradients against the float64 reference; and the invariants
of every mask mode."""
import contextlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from onmt_structdrop import MASK_MODES, StructDropLSTM, ops
from onmt_structdrop.masks import PATTERN_MODES, kept_count, sample_mask
from onmt_structdrop.reference import reference_lstm

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextlib.contextmanager
def serving(backend):
    """Put ``backend`` first for every plan it can compute (the native engine included where it is slower)."""
    ok, reason = ops.availability(backend)
    if not ok:
        pytest.skip(f"{backend} backend not available: {reason}")
    native = ops.get("native")
    only_where_faster = native.ONLY_WHERE_FASTER
    native.ONLY_WHERE_FASTER = False
    try:
        with ops.preferred(backend):
            yield
    finally:
        native.ONLY_WHERE_FASTER = only_where_faster


@st.composite
def layers(draw):
    T, B = draw(st.integers(1, 6)), draw(st.integers(1, 4))
    packed = draw(st.booleans())
    lengths = [draw(st.integers(1, T)) for _ in range(B)] if packed else None
    if packed:
        lengths[draw(st.integers(0, B - 1))] = T  # the padded output spans T steps
    return dict(T=T, B=B, n=draw(st.integers(1, 7)), H=draw(st.integers(1, 9)), layers=draw(st.integers(1, 3)),
                bidirectional=draw(st.booleans()), mode=draw(st.sampled_from(MASK_MODES)),
                p=draw(st.sampled_from([0.0, 0.1, 0.5, 0.85])), recurrent=draw(st.sampled_from([0.0, 0.3, 0.7])),
                dtype=draw(st.sampled_from([torch.float64, torch.float32])), lengths=lengths,
                seed=draw(st.integers(0, 2 ** 16)))


def run(case):
    """The module's outputs and gradients, and the reference's in float64 with the same masks."""
    torch.manual_seed(case["seed"])
    model = StructDropLSTM(case["n"], case["H"], case["layers"], dropout=case["p"], input_dropout=case["p"],
                           recurrent_dropout=case["recurrent"], bidirectional=case["bidirectional"],
                           mask_mode=case["mode"]).to(case["dtype"])
    x = torch.randn(case["T"], case["B"], case["n"], dtype=torch.float64)
    weights = torch.randn(case["T"], case["B"], model.hidden_size * (2 if case["bidirectional"] else 1),
                          dtype=torch.float64)

    xin = x.to(case["dtype"], copy=True).requires_grad_()
    inp = xin if case["lengths"] is None else pack_padded_sequence(xin, case["lengths"], enforce_sorted=False)
    out, (h, c) = model(inp)
    if case["lengths"] is not None:
        out, _ = pad_packed_sequence(out, total_length=case["T"])
    (out.double() * weights).sum().backward()
    got = [out.double(), h.double(), c.double(), xin.grad.double()] + [p.grad.double() for p in model.parameters()]

    masks = {"input": [m if m is None else m.double() for m in model.last_masks["input"]],
             "recurrent": [[m if m is None else m.double() for m in r] for r in model.last_masks["recurrent"]]}
    params = {k: v.detach().double().requires_grad_() for k, v in model.named_parameters()}
    xr = x.clone().requires_grad_()
    ref, (hr, cr) = reference_lstm(params, xr, masks, case["lengths"], None, case["layers"], case["bidirectional"])
    (ref * weights).sum().backward()
    want = [ref, hr, cr, xr.grad] + [params[k].grad for k, _ in model.named_parameters()]
    return got, want


@pytest.mark.parametrize("backend", ["torch", "native"])
@SETTINGS
@given(case=layers())
def test_the_layer_matches_the_reference(backend, case):
    with serving(backend):
        got, want = run(case)
    tol = dict(rtol=1e-9, atol=1e-9) if case["dtype"] == torch.float64 else dict(rtol=2e-4, atol=2e-4)
    for i, (a, e) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, e, **tol, msg=lambda m, i=i: f"tensor {i} of {case}: {m}")


@SETTINGS
@given(mode=st.sampled_from(MASK_MODES), p=st.floats(0.0, 0.85), n=st.integers(1, 40), steps=st.integers(1, 12),
       batch=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
def test_mask_invariants(mode, p, n, steps, batch, seed):
    mask = sample_mask(mode, p, n, steps, batch=batch, generator=torch.Generator().manual_seed(seed))
    if mask is None:  # nothing to drop
        assert p == 0
        return
    dense = mask if torch.is_tensor(mask) else mask.dense(torch.float64)
    if mode == "bernoulli":  # one draw per element, scaled by 1 / (1 - p)
        assert dense.shape == (steps, batch, n)
        assert all(v == 0 or v == pytest.approx(1 / (1 - p)) for v in dense.unique().tolist())
        return
    assert dense.shape == (steps, n)  # the same units for every sequence of the batch
    assert torch.isfinite(dense).all() and (dense >= 0).all()
    kept = (dense > 0).sum(1)
    if mode in PATTERN_MODES:  # one unit (rbd) or tile (tbd) of every dp kept, each scaled by the step's dp
        for row in dense:
            values = row[row > 0].unique().tolist()
            assert len(values) <= 1 and all(v == int(v) and 1 <= v <= 8 for v in values)
        return
    k = kept_count(p, n)
    assert (kept == k).all()  # a fixed count per step, every kept unit scaled by n / k: each step sums to n
    torch.testing.assert_close(dense.sum(1), torch.full((steps,), float(n), dtype=torch.float64))
    distinct = {tuple(row.tolist()) for row in dense}
    if mode == "batch":
        assert len(distinct) == 1

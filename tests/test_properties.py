"""Property-based checks (hypothesis): random shapes, rates, modes, dtypes, packed lengths, layer counts and
directions on each available backend, outputs and gradients against the float64 reference; and the invariants
of every mask mode."""
import contextlib
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from onmt_structdrop import MASK_MODES, StructDropLSTM, ops
from onmt_structdrop.masks import PATTERN_MODES, StructuredMask, kept_count, sample_mask
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


# ---- explicit masks: valid ones match the reference, invalid ones give one clear error -------------------------
CORRUPTIONS = ("past the width", "negative", "duplicate", "fewer steps", "more steps", "other width", "float keep",
               "step twice", "step missing", "nan value", "negative value", "short values", "bad window",
               "bad stride", "bad scale", "wrong type", "dense wrong shape", "dense negative", "dense integer")


@st.composite
def structured_masks(draw, T, n):
    """A valid StructuredMask over ``T`` steps and ``n`` units: steps partitioned into kept sets of any size (empty
    ones too), with multipliers, a scale, a permutation's windows or strides."""
    groups = draw(st.integers(1, T))
    assignment = [draw(st.integers(0, groups - 1)) for _ in range(T)]
    used = sorted(set(assignment))
    group_steps = [torch.tensor([t for t in range(T) if assignment[t] == g]) for g in used]
    form = draw(st.sampled_from(["sets", "values", "windows", "strides"]))
    if form == "windows":
        perm = torch.tensor(draw(st.permutations(range(n))))
        k = draw(st.integers(0, n))
        offsets = [draw(st.integers(0, n - 1)) for _ in used]
        keep = [perm.repeat(2)[o:o + k] for o in offsets]
        return StructuredMask(n, T, keep, group_steps, scale=draw(st.sampled_from([1.0, 2.5])), perm=perm,
                              offsets=offsets)
    if form == "strides":
        strides = [(draw(st.integers(0, 3)), draw(st.integers(1, 3))) for _ in used]
        keep = [torch.arange(a, max(a, n), b) for a, b in strides]
        values = [torch.full((len(k),), float(b)) for k, (_, b) in zip(keep, strides)]
        return StructuredMask(n, T, keep, group_steps, values=values, strides=strides)
    keep = [torch.tensor(sorted(draw(st.sets(st.integers(0, n - 1)))), dtype=torch.long) for _ in used]
    values = [torch.tensor(draw(st.lists(st.floats(0.0, 3.0), min_size=len(k), max_size=len(k))),
                           dtype=torch.float32) for k in keep] if form == "values" else None
    return StructuredMask(n, T, keep, group_steps, scale=draw(st.sampled_from([1.0, 1.5, 3.0])), values=values)


def dense_of(mask, T, n):
    """The mask as a ``[T, n]`` (or ``[T, B, n]``) float64 tensor, computed here from its fields alone."""
    if mask is None or torch.is_tensor(mask):
        return None if mask is None else mask.double()
    out = torch.zeros(T, n, dtype=torch.float64)
    for g, (keep, steps) in enumerate(zip(mask.keep, mask.group_steps)):
        for t in steps.tolist():
            for j, unit in enumerate(keep.tolist()):
                out[t, unit] = float(mask.values[g][j]) if mask.values is not None else mask.scale
    return out


def invalid_mask(how, T, n, B):
    """A mask over ``T`` steps of ``n`` units (``B`` rows) that is wrong in the way ``how`` names."""
    every = [torch.arange(T)]
    one = lambda keep, **kw: StructuredMask(n, T, [keep], every, **{"scale": 2.0, **kw})  # noqa: E731
    if how == "past the width":
        return one(torch.tensor([n]))
    if how == "negative":
        return one(torch.tensor([-1]))
    if how == "duplicate":
        return one(torch.tensor([0, 0]))
    if how in ("fewer steps", "more steps"):
        steps = T - 1 if how == "fewer steps" else T + 1
        return StructuredMask(n, steps, [torch.tensor([0])], [torch.arange(steps)], scale=2.0)
    if how == "other width":
        return StructuredMask(n + 1, T, [torch.tensor([0])], every, scale=2.0)
    if how == "float keep":
        return one(torch.tensor([0.0]))
    if how == "step twice":
        return StructuredMask(n, T, [torch.tensor([0])] * 2, [torch.arange(T), torch.tensor([0])], scale=2.0)
    if how == "step missing":
        return StructuredMask(n, T, [torch.tensor([0])], [torch.arange(1, T + 1)], scale=2.0)
    if how in ("nan value", "negative value", "short values"):
        value = {"nan value": [float("nan")], "negative value": [-1.0], "short values": [1.0, 1.0]}[how]
        return one(torch.tensor([0]), values=[torch.tensor(value)])
    if how == "bad window":  # unit 1 is not the window of the identity at offset 0 (n = 1: no offset 1)
        return one(torch.tensor([1 if n > 1 else 0]), perm=torch.arange(n), offsets=[0 if n > 1 else 1])
    if how == "bad stride":  # unit 0 alone is not arange(0, n, 1) (n = 1: nor arange(1, 1, 1))
        return one(torch.tensor([0]), strides=[(0 if n > 1 else 1, 1)])
    if how == "bad scale":
        return one(torch.tensor([0]), scale=float("inf"))
    if how == "wrong type":
        return [[1.0] * n] * T
    if how == "dense wrong shape":
        return torch.ones(T, n + 1)
    if how == "dense negative":
        return -torch.ones(T, B, n)
    assert how == "dense integer"
    return torch.ones(T, n, dtype=torch.long)


@st.composite
def explicit_cases(draw):
    T, B, n, H = draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 6)), draw(st.integers(1, 5))
    layers, bidirectional = draw(st.integers(1, 2)), draw(st.booleans())
    dirs = 2 if bidirectional else 1

    def site(width):
        kind = draw(st.sampled_from(["none", "structured", "dense", "per row"]))
        if kind == "none":
            return None
        if kind == "structured":
            return draw(structured_masks(T, width))
        shape = (T, width) if kind == "dense" else (T, B, width)
        return torch.tensor(draw(st.lists(st.sampled_from([0.0, 0.5, 2.0]), min_size=math.prod(shape),
                                          max_size=math.prod(shape)))).view(shape)

    masks = {"input": [site(n if l == 0 else H * dirs) for l in range(layers)],
             "recurrent": [[site(H) for _ in range(dirs)] for _ in range(layers)]}
    bad = draw(st.sampled_from((None,) * 4 + CORRUPTIONS))
    if bad is not None:
        masks["input"][0] = invalid_mask(bad, T, n, B)
    return dict(T=T, B=B, n=n, H=H, layers=layers, bidirectional=bidirectional, masks=masks, bad=bad,
                dtype=draw(st.sampled_from([torch.float64, torch.float32])), seed=draw(st.integers(0, 2 ** 16)))


@pytest.mark.parametrize("backend", ["torch", "native"])
@SETTINGS
@given(case=explicit_cases())
def test_explicit_masks_match_the_reference_or_are_refused(backend, case):
    torch.manual_seed(case["seed"])
    model = StructDropLSTM(case["n"], case["H"], case["layers"], bidirectional=case["bidirectional"]).to(
        case["dtype"])
    x = torch.randn(case["T"], case["B"], case["n"], dtype=torch.float64)
    xin = x.to(case["dtype"], copy=True).requires_grad_()
    with serving(backend):
        if case["bad"] is not None:
            with pytest.raises((ValueError, TypeError), match=r"^masks\['input'\]\[0\]"):
                model(xin, masks=case["masks"])
            return
        out, (h, c) = model(xin, masks=case["masks"])
    weights = torch.randn(out.shape, dtype=torch.float64)
    (out.double() * weights).sum().backward()
    got = [out.double(), h.double(), c.double(), xin.grad.double()] + [p.grad.double() for p in model.parameters()]

    T, masks = case["T"], case["masks"]
    dense = {"input": [dense_of(m, T, getattr(m, "n", None)) for m in masks["input"]],
             "recurrent": [[dense_of(m, T, case["H"]) for m in r] for r in masks["recurrent"]]}
    params = {k: v.detach().double().requires_grad_() for k, v in model.named_parameters()}
    xr = x.clone().requires_grad_()
    ref, (hr, cr) = reference_lstm(params, xr, dense, None, None, case["layers"], case["bidirectional"])
    (ref * weights).sum().backward()
    want = [ref, hr, cr, xr.grad] + [params[k].grad for k, _ in model.named_parameters()]
    tol = dict(rtol=1e-9, atol=1e-9) if case["dtype"] == torch.float64 else dict(rtol=2e-4, atol=2e-4)
    for i, (a, e) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, e, **tol, msg=lambda m, i=i: f"tensor {i}: {m}")

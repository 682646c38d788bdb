"""The seam's test matrix: every available backend x mask mode x dtype x shape against the float64 reference.

Each backend is put first with ``ONMT_STRUCTDROP_BACKEND``; a backend that is not available here, or that
declines the case, is skipped with its reason. Without a GPU the cupy backend runs on CPU tensors with its
kernels computed in torch (cuda_emulator.py), so that its own code is checked everywhere. float64 is checked
tightly; float32 against the float64 reference, within a bound set by the torch backend's own float32 error on
the same case.
"""
import itertools

import cuda_emulator
import pytest
import torch

from onmt_structdrop import StructDropLSTM, ops
from onmt_structdrop.functions import LSTMCellFunction, StepProduct
from onmt_structdrop.masks import MASK_MODES, STRUCTURED_MODES, PatternOptions, mask_from_dense, sample_mask
from onmt_structdrop.ops import cupy_backend
from onmt_structdrop.reference import reference_lstm

N, OUT, M = 9, 11, 4
CPU = torch.device("cpu")
BACKENDS = [*ops.BACKENDS, "cupy:kernels"]  # the cupy backend on each of its product routes (cublas first)


def use(backend, monkeypatch, op, tensor, plan=None):
    """Put ``backend`` first (``name:route`` for a cupy route), or skip saying why it cannot serve ``op`` here."""
    backend, _, route = backend.partition(":")
    if backend == "cupy":
        monkeypatch.setattr(cupy_backend, "ROUTE", cupy_backend.ROUTES[route or "cublas"])
        if tensor.device.type == "cpu":
            cuda_emulator.emulate(monkeypatch)
    ok, reason = ops.availability(backend)
    if not ok:
        pytest.skip(f"{backend} backend not available: {reason}")
    monkeypatch.setenv(ops.ENV, backend)
    if backend == "native":  # serve every plan it can compute, not only those it is faster on
        monkeypatch.setattr(ops.get("native"), "ONLY_WHERE_FASTER", False)
    if ops.select(op, tensor, plan).NAME != backend:
        pytest.skip(f"{backend} backend declines {op}: "
                    f"{ops.get(backend).declines(op, tensor.device, tensor.dtype, plan)}")
    return ops.get(backend)


def _structured(name, steps=6, n=N):
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    if name == "explicit":  # uneven counts and values, one step keeping nothing
        dense = torch.rand(steps, n, generator=g, dtype=torch.float64) * (torch.rand(steps, n, generator=g) > 0.4)
        dense[1] = 0
        return mask_from_dense(dense)
    if name == "k=1":
        return sample_mask("time", 0.95, n, steps, generator=g)
    if name == "k=n":
        return sample_mask("time", 0.01, n, steps, generator=g)
    if name == "pool":
        return sample_mask("pool", 0.6, n, steps, generator=g, pool_size=3)
    pattern = PatternOptions(tile_size=3) if name == "tbd" else PatternOptions()
    return sample_mask(name, 0.5, n, steps, generator=g, pattern=pattern)


MASKS = [m for m in STRUCTURED_MODES] + ["explicit", "k=1", "k=n"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MASKS)
@pytest.mark.parametrize("batch", [M, 130])  # 130: the native products' library path (one gather, then MKL)
def test_primitives_match_dense_math(backend, name, batch, monkeypatch):
    g = torch.Generator().manual_seed(1)
    f64 = dict(generator=g, dtype=torch.float64)
    mask = ops.pack(_structured(name), CPU, torch.float64)
    be = use(backend, monkeypatch, "primitives", torch.zeros(1, dtype=torch.float64), mask)
    wt = torch.randn(N, OUT, **f64)
    dense = mask.dense(torch.float64)
    assert dense.shape == (mask.steps, N) and (dense != 0).sum(1).tolist() == [
        mask.sizes[s] - int((mask.values[s, : mask.sizes[s]] == 0).sum()) if mask.values is not None
        else mask.sizes[s] for s in mask.step_sets]
    for t in range(mask.steps):
        keep, mult = mask.kept(mask.step_sets[t])
        rows = be.kept_rows(wt, keep)
        a, dout, out = torch.randn(batch, N, **f64), torch.randn(batch, OUT, **f64), torch.randn(batch, OUT, **f64)
        expected = out + 0.5 * (a * dense[t]) @ wt
        torch.testing.assert_close(be.kept_product(out.clone(), a, keep, mult, rows, 0.5), expected, rtol=1e-12,
                                   atol=1e-12)
        da = be.kept_input_grad(torch.full((batch, N), float("nan"), dtype=torch.float64), dout, keep, mult, rows)
        torch.testing.assert_close(da, (dout @ wt.t()) * dense[t], rtol=1e-12, atol=1e-12)  # dropped: zero
        dwt = torch.ones(N, OUT, dtype=torch.float64)
        be.add_rows(dwt, keep, be.kept_rows_grad(a, dout, keep, mult))
        torch.testing.assert_close(dwt, 1 + (a * dense[t]).t() @ dout, rtol=1e-12, atol=1e-12)
        be.add_kept_rows_grad(dwt, a, dout, keep, mult, 0.5)  # adds into the kept rows only
        torch.testing.assert_close(dwt, 1 + 1.5 * (a * dense[t]).t() @ dout, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MASKS + ["dense", "per-row", "none"])
# 300: whole column blocks of the native products and a narrower one; 1100: the native input gradients' sums over
# several spans of columns (512 in float64), the last one partial
@pytest.mark.parametrize("OUT", [OUT, 300, 1100])
# the weight by rows (contiguous), by columns (nn.Linear's weight transposed) or neither (a strided view)
@pytest.mark.parametrize("layout", ["rows", "columns", "strided"])
def test_sequence_products_match_dense_math(backend, name, OUT, layout, monkeypatch):
    T, B = 6, 3
    g = torch.Generator().manual_seed(2)
    f64 = dict(generator=g, dtype=torch.float64)
    if name == "dense":
        mask = _structured("time").dense(torch.float64)
        full = mask.unsqueeze(1)
    elif name == "per-row":
        mask = full = torch.rand(T, B, N, **f64)
    elif name == "none":
        mask, full = None, torch.ones(T, 1, N, dtype=torch.float64)
    else:
        mask = ops.pack(_structured(name), CPU, torch.float64)
        full = mask.dense(torch.float64).unsqueeze(1)
    a, dout = torch.randn(T, B, N, **f64), torch.randn(T, B, OUT, **f64)
    wt = {"rows": lambda: torch.randn(N, OUT, **f64), "columns": lambda: torch.randn(OUT, N, **f64).t(),
          "strided": lambda: torch.randn(N, 2 * OUT, **f64)[:, ::2]}[layout]()
    be = use(backend, monkeypatch, "sequence", a, mask)
    bias = torch.randn(OUT, **f64)
    expected = (a * full) @ wt + bias
    out, saved = be.sequence_product(a, wt, mask, bias)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(be.sequence_product(a, wt, mask)[0], expected - bias, rtol=1e-12, atol=1e-12)
    assert all(torch.is_tensor(t) for t in saved)
    da, dwt, db = be.sequence_backward(a, wt, mask, dout, True, saved, True)
    torch.testing.assert_close(da, (dout @ wt.t()) * full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(db, dout.sum(dim=(0, 1)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dwt, (a * full).reshape(-1, N).t() @ dout.reshape(-1, OUT), rtol=1e-12,
                               atol=1e-12)
    if backend == "native" and layout != "strided":  # the gradient in the weight's own layout: no transposing copy
        assert dwt.stride() == wt.stride()
    da, dwt_alone, db = be.sequence_backward(a, wt, mask, dout, need_input_grad=False)
    assert da is None and db is None
    torch.testing.assert_close(dwt_alone, dwt, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["time", "batch", "explicit"])
def test_step_products_sum_their_steps_gradients(backend, name, monkeypatch):
    g = torch.Generator().manual_seed(4)
    mask = ops.pack(_structured(name), CPU, torch.float64)
    use(backend, monkeypatch, "primitives", torch.zeros(1, dtype=torch.float64))
    dense = mask.dense(torch.float64)
    weight = torch.randn(OUT, N, generator=g, dtype=torch.float64, requires_grad=True)
    xs = [torch.randn(M, N, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(mask.steps)]
    douts = [torch.randn(M, OUT, generator=g, dtype=torch.float64) for _ in range(mask.steps)]

    def loss(w, product=None):
        return sum(((product(x, t) if product else (x * dense[t]) @ w.t()) * d).sum()
                   for t, (x, d) in enumerate(zip(xs, douts)))

    expected = torch.autograd.grad(loss(weight), [weight, *xs])
    total = loss(weight, StepProduct(weight, mask))
    for twice in (1, 2):  # a second backward of the same graph adds the same gradients again
        total.backward(retain_graph=True)
        for actual, want in zip([weight.grad, *(x.grad for x in xs)], expected):
            torch.testing.assert_close(actual, twice * want, rtol=1e-12, atol=1e-12)
    frozen = weight.detach()  # a weight without gradient: the inputs' gradients still flow
    for x in xs:
        x.grad = None
    loss(frozen, StepProduct(frozen, mask)).backward()
    for x, want in zip(xs, expected[1:]):
        torch.testing.assert_close(x.grad, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("H", [7, 37])  # 37: whole vectors of units and a remainder
def test_cell_matches_autograd_of_its_equations(backend, dtype, H, monkeypatch):
    B = 5
    g = torch.Generator().manual_seed(3)
    gates, c_prev = torch.randn(B, 4 * H, generator=g, dtype=dtype), torch.randn(B, H, generator=g, dtype=dtype)
    dh, dc = torch.randn(B, H, generator=g, dtype=dtype), torch.randn(B, H, generator=g, dtype=dtype)
    use(backend, monkeypatch, "primitives", gates)
    G, C = (t.detach().double().clone().requires_grad_() for t in (gates, c_prev))
    i, f, gg, o = G.chunk(4, 1)
    c_ref = f.sigmoid() * C + i.sigmoid() * gg.tanh()
    h_ref = o.sigmoid() * c_ref.tanh()
    (h_ref * dh.double() + c_ref * dc.double()).sum().backward()
    G2, C2 = gates.clone().requires_grad_(), c_prev.clone().requires_grad_()
    h, c = LSTMCellFunction.apply(G2, C2)
    (h * dh + c * dc).sum().backward()
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for actual, expected in [(h, h_ref), (c, c_ref), (G2.grad, G.grad), (C2.grad, C.grad)]:
        torch.testing.assert_close(actual.double(), expected.detach(), **tol)
    in_place = gates.clone()  # the contract lets act be the gates themselves
    act, *_ = ops.select("primitives", gates).cell_forward(in_place, c_prev, act=in_place)
    assert act is in_place
    expected = torch.cat([x.sigmoid() if q != 2 else x.tanh() for q, x in enumerate(G.detach().chunk(4, 1))], 1)
    torch.testing.assert_close(act.double(), expected, **tol)


# ---- the whole layer ---------------------------------------------------------------------------------------
SHAPES = {  # T, B, n_in, H, layers, bidirectional, packed lengths (None: padded)
    "odd": (5, 3, 7, 5, 1, False, None),
    "B=1": (4, 1, 3, 6, 2, True, None),
    "packed": (6, 4, 5, 3, 2, True, [6, 2, 5, 1]),
    "3 layers": (3, 2, 4, 4, 3, False, [3, 2]),
    "k=1": (4, 2, 3, 1, 1, True, None),  # one hidden unit: every recurrent kept set has k = 1 = n
}


def _run(model, x, h0, c0, lengths, masks=None):
    x, h0, c0 = (t.clone().requires_grad_() for t in (x, h0, c0))
    inp = x if lengths is None else torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, (h, c) = model(inp, (h0, c0), masks=masks)
    if lengths is not None:
        out = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=x.shape[0])[0]
    w = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).view_as(out)
    ((out * w).sin().sum() + h.cos().sum() + (c * 0.7).sum()).backward()
    return [out, h, c, x.grad, h0.grad, c0.grad] + [p.grad for p in model.parameters()]


def _reference(model, x, h0, c0, lengths, masks, dtype=torch.float64):
    """The plain reference's outputs and gradients, computed in ``dtype`` (float64: the truth; float32: the
    rounding error float32 arithmetic makes on its own)."""
    params = {k: v.detach().to(dtype).requires_grad_() for k, v in model.named_parameters()}
    x, h0, c0 = (t.detach().to(dtype).requires_grad_() for t in (x, h0, c0))
    double = lambda m: None if m is None else m.to(dtype)  # noqa: E731
    masks = {"input": [double(m) for m in masks["input"]],
             "recurrent": [[double(m) for m in r] for r in masks["recurrent"]]}
    out, (h, c) = reference_lstm(params, x, masks, lengths, (h0, c0), model.num_layers, model.bidirectional)
    w = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).view_as(out)
    ((out * w).sin().sum() + h.cos().sum() + (c * 0.7).sum()).backward()
    return [out, h, c, x.grad, h0.grad, c0.grad] + [params[k].grad for k, _ in model.named_parameters()]


def _max_errors(actual, expected):
    return [float((a.detach().double() - e.detach()).abs().max()) if a.numel() else 0.0 for a, e in zip(actual, expected)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("mode,shape", list(itertools.product(MASK_MODES, SHAPES)))
def test_layer_matches_reference(backend, dtype, mode, shape, monkeypatch):
    T, B, n_in, H, layers, bidirectional, lengths = SHAPES[shape]
    torch.manual_seed(7)
    model = StructDropLSTM(n_in, H, layers, dropout=0.5, recurrent_dropout=0.4, input_dropout=0.3,
                           bidirectional=bidirectional, mask_mode=mode).to(dtype)
    g = torch.Generator().manual_seed(8)
    dirs = 2 if bidirectional else 1
    x = torch.randn(T, B, n_in, generator=g, dtype=dtype)
    h0, c0 = (torch.randn(layers * dirs, B, H, generator=g, dtype=dtype) for _ in range(2))
    masks = model.sample_masks(T, B)
    plan = ops.LayerPlan(ops.prepare(masks["input"][0], CPU, dtype), None, None, False)
    use(backend, monkeypatch, "lstm_layer", x, plan)
    actual = _run(model, x, h0, c0, lengths, masks)
    expected = _reference(model, x, h0, c0, lengths, model.last_masks)
    if dtype == torch.float64:
        for i, (a, e) in enumerate(zip(actual, expected)):
            torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10, msg=lambda m, i=i: f"tensor {i}: {m}")
        return
    # float32: within a few times the error of the plain reference computed in float32 on the same case (a bound
    # that no backend sets for itself), and never far off
    plain_errors = _max_errors(_reference(model, x, h0, c0, lengths, model.last_masks, torch.float32), expected)
    for i, (err, base) in enumerate(zip(_max_errors(actual, expected), plain_errors)):
        assert err <= 4 * base + 1e-6 and err < 1e-3, f"tensor {i}: error {err:.3g}, plain float32 {base:.3g}"


def test_forcing_an_unavailable_or_unknown_backend_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(ops.get("native"), "available", lambda: (False, "not built here"))
    ops.availability.cache_clear()
    try:
        monkeypatch.setenv(ops.ENV, "native")
        with pytest.raises(ops.BackendUnavailable, match="ONMT_STRUCTDROP_BACKEND=native, but the native backend is "
                                                         "not available: not built here"):
            StructDropLSTM(3, 4, dropout=0.5, input_dropout=0.5)(torch.randn(2, 1, 3))
        monkeypatch.setenv(ops.ENV, "triton")
        with pytest.raises(ValueError, match="must be one of cupy, native, torch; got 'triton'"):
            ops.select("lstm_layer", torch.zeros(1))
        monkeypatch.setenv(ops.ENV, "torch")
        assert ops.select("lstm_layer", torch.zeros(1)).NAME == "torch"
        monkeypatch.delenv(ops.ENV)
        assert ops.select("primitives", torch.zeros(1)).NAME == "torch"  # on CPU without native: torch serves
    finally:
        ops.availability.cache_clear()


def test_a_forced_backend_that_declines_a_plan_hands_it_on(monkeypatch):
    monkeypatch.setattr(ops.get("cupy"), "available", lambda: (True, ""))
    ops.availability.cache_clear()
    try:
        monkeypatch.setenv(ops.ENV, "cupy")
        # cupy declines CPU tensors: the next in line serves
        assert ops.select("lstm_layer", torch.zeros(1)).NAME == ("native" if ops.availability("native")[0] else "torch")
    finally:
        ops.availability.cache_clear()


# ---- the hot path reads nothing back from a tensor --------------------------------------------------------
@pytest.mark.parametrize("backend", ["cupy", "cupy:kernels"])
@pytest.mark.parametrize("mode", ["time", "bernoulli"])
def test_cupy_layer_multiplies_dense_masks_in(backend, mode, monkeypatch):
    """Dense masks (``compact=False``, and ``bernoulli``'s per-row masks) on the cupy backend's graphed loops."""
    T, B, n_in, H = 5, 3, 4, 6
    torch.manual_seed(3)
    model = StructDropLSTM(n_in, H, 2, dropout=0.5, recurrent_dropout=0.4, input_dropout=0.3, bidirectional=True,
                           mask_mode=mode, compact=False).double()
    g = torch.Generator().manual_seed(4)
    x, h0, c0 = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((T, B, n_in), (4, B, H), (4, B, H)))
    masks = model.sample_masks(T, B)
    plan = ops.LayerPlan(ops.prepare(masks["recurrent"][0][0], CPU, torch.float64, compact=False), None, None, False)
    assert plan.input_mask.dim() in (2, 3)
    use(backend, monkeypatch, "lstm_layer", x, plan)
    actual = _run(model, x, h0, c0, None, masks)
    for a, e in zip(actual, _reference(model, x, h0, c0, None, model.last_masks)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_cupy_leaves_sequence_products_of_few_kept_sets_to_the_torch_backend():
    """On an H200 the torch backend's one gather per call (batch) and permuted copy (pool) ran the output layer's
    products faster than the cupy backend; a fresh set per step (time) and strided sets (rbd) ran faster on cupy."""
    for mode, served in [("time", True), ("rbd", True), ("tbd", True), ("batch", False), ("pool", False)]:
        mask = ops.prepare(sample_mask(mode, 0.5, 1024, 50), CPU, torch.float32)  # the measured shape
        assert (cupy_backend.plan_declines("sequence", mask) is None) == served, mode
        assert cupy_backend.plan_declines("lstm_layer", ops.LayerPlan(mask, mask, None, False)) is None, mode


def test_cupy_is_switched_off_by_its_variable(monkeypatch):
    monkeypatch.setenv(cupy_backend.SWITCH_ENV, "off")
    assert cupy_backend.declines("primitives", torch.device("cuda"), torch.float32) == "ONMT_STRUCTDROP_CUPY=off"
    monkeypatch.delenv(cupy_backend.SWITCH_ENV)
    assert cupy_backend.declines("primitives", torch.device("cuda"), torch.float32) is None


READ_BACKS = ("tolist", "item", "__int__", "__float__", "__bool__", "__index__", "numpy")


@pytest.mark.parametrize("mode", MASK_MODES)
def test_layer_hot_path_reads_nothing_back_from_tensors(mode, monkeypatch):
    """Sampling and checking explicit masks run on the host before the layers; the layers themselves (forward and
    backward) never read a value back from a tensor, so that a C++ loop or a CUDA graph can replay them."""
    model = StructDropLSTM(6, 5, 2, dropout=0.5, recurrent_dropout=0.5, input_dropout=0.3, bidirectional=True,
                           mask_mode=mode)
    x = torch.randn(7, 3, 6, requires_grad=True)

    def refuse(name):
        def read_back(*args, **kwargs):
            raise AssertionError(f"Tensor.{name} called in the hot path")
        return read_back

    def refusing_read_backs(run):
        def wrapped(*args, **kwargs):
            with monkeypatch.context() as patched:
                for name in READ_BACKS:
                    patched.setattr(torch.Tensor, name, refuse(name))
                return run(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(model, "_run_layers", refusing_read_backs(model._run_layers))
    y, (h, c) = model(x)
    refusing_read_backs(lambda: (y.sum() + h.sum() + c.sum()).backward())()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(AssertionError, match="called in the hot path"):  # the check itself works
        refusing_read_backs(lambda: torch.ones(2).tolist())()


# ---- CUDA graphs of the cupy backend's layer loops (replayed by re-running them where there is no GPU) --------
@pytest.mark.parametrize("route", cupy_backend.ROUTES)
@pytest.mark.parametrize("mode", ["time", "batch", "pool", "bernoulli"])
def test_graph_replays_equal_eager_runs_with_new_masks_and_inputs(mode, route, monkeypatch):
    """Calls after the first replay a captured graph with new inputs and masks copied into its static buffers; they
    give what eager runs give; one graph per layer-direction and pass serves every draw."""
    use(f"cupy:{route}", monkeypatch, "lstm_layer", torch.zeros(1))
    model = StructDropLSTM(6, 5, 2, dropout=0.4, recurrent_dropout=0.3, input_dropout=0.2, bidirectional=True,
                           mask_mode=mode).double()
    results = cuda_emulator.graphed_and_eager_runs(
        model, lambda: torch.randn(4, 3, 6, dtype=torch.float64), monkeypatch)
    for graphed, eager in zip(results["1"], results["0"]):
        for a, e in zip(graphed, eager):
            torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    # 4 layer-directions x (forward, backward), captured at their second call and replayed at the third
    assert cupy_backend.GRAPHS.captures == 8


def test_a_graph_key_holds_every_host_value_a_capture_bakes_in():
    import dataclasses
    from onmt_structdrop.ops import cuda_graphs
    mask = ops.pack(_structured("pool"), CPU, torch.float64)
    key = cuda_graphs.mask_key(mask)
    for same in ({"keep": mask.keep.flip(1)}, {"step_sets": mask.step_sets[::-1]},  # tensors: copied in; the
                 {"sizes": tuple(s - 1 for s in mask.sizes)}, {"offsets": None}):  # sets: chosen on the device
        assert cuda_graphs.mask_key(dataclasses.replace(mask, **same)) == key, same
    for change in ({"scale": mask.scale * 2}, {"values": torch.ones_like(mask.keep, dtype=torch.float64)},
                   {"n": mask.n + 1}):
        assert cuda_graphs.mask_key(dataclasses.replace(mask, **change)) != key, change


def test_a_graph_is_captured_at_the_second_call_of_its_key():
    """A key's first call runs eagerly, its second captures and replays; keys seen once never pay for a capture."""
    from onmt_structdrop.ops import cuda_graphs
    cache, calls = cuda_graphs.GraphCache(cuda_emulator.RecordedGraph), []

    def fn(x):
        calls.append(x)
        return (x * 2,)

    for value in (1.0, 2.0, 3.0):
        (out,) = cache.run("same shape", fn, (torch.tensor([value]),))
        assert out.item() == 2 * value
    assert cache.captures == 1
    for key in range(5):  # a new key every call, as rbd widths change with every draw
        cache.run(("width", key), fn, (torch.tensor([1.0]),))
    assert cache.captures == 1 and len(calls) == 1 + 1 + 5  # eager, capture (replays run no Python), five eager


def test_the_emulated_graph_replays_what_was_captured_and_nothing_else():
    """The CPU stand-in for a CUDA graph: device data is read at replay, host values stay as captured, and a
    host read of device data in a capture fails, as under CUDA."""
    graph, x, host = cuda_emulator.RecordedGraph(), torch.tensor([1.0, 2.0]), {"scale": 3.0}
    (out,) = graph.capture(lambda: ((x * host["scale"]).sin() + 1,))
    x.copy_(torch.tensor([5.0, 7.0]))
    host["scale"] = 100.0  # a host value of another call: a replay does not see it
    graph.replay()
    torch.testing.assert_close(out, (torch.tensor([5.0, 7.0]) * 3.0).sin() + 1)
    with pytest.raises(AssertionError, match="a capture read a device value on the host"):
        cuda_emulator.RecordedGraph().capture(lambda: (x * int(x[0]),))


# ---- the seam's one question: which backend, and does compacting pay -------------------------------------------
def test_the_seam_compacts_where_the_serving_backend_finds_that_it_pays(monkeypatch):
    x = torch.zeros(6, 3, N)
    mask = lambda mode: ops.prepare(sample_mask(mode, 0.4, N, 6, batch=3, generator=torch.Generator().manual_seed(1)),  # noqa: E731
                                    CPU, torch.float32)
    with ops.preferred("torch"):
        one = ops.choose("sequence", x, mask("batch"))  # one kept set for every step: one smaller product
        assert (one.name, one.compact) == ("torch", True) and one.plan.num_sets == 1
        per_step = ops.choose("sequence", x, mask("time"))  # a set per step: gathers cost more than they save
        assert (per_step.name, per_step.compact) == ("torch", False)
        torch.testing.assert_close(per_step.plan, mask("time").dense(torch.float32))  # the same masks, dense
        with ops.always_compact():
            assert ops.choose("sequence", x, mask("time")).compact
    for mode in ("batch", "time"):  # a layer and a step: compacted on every backend
        layer = ops.LayerPlan(mask(mode), mask(mode), None, False)
        assert ops.choose("lstm_layer", x, layer).compact and ops.choose("primitives", x, mask(mode)).compact
    # the rows of a batch-major block: one product where one kept set serves every step, else dense
    assert ops.choose("rows", x, mask("batch")).compact and not ops.choose("rows", x, mask("time")).compact
    if ops.availability("native")[0]:  # its kernels read each step's kept rows in place: compacting pays
        assert ops.choose("sequence", x, mask("time")).name == "native"
        assert ops.choose("sequence", x, mask("time")).compact
    use("cupy", monkeypatch, "primitives", x)  # (emulated here) a sequence's per-step sets: dense on a GPU
    monkeypatch.setattr(ops.get("cupy"), "declines", lambda op, device, dtype, plan=None: None)
    chosen = ops.choose("sequence", x, mask("time"))
    assert not chosen.compact and not isinstance(chosen.plan, ops.PackedMask)


def test_the_benchmarks_list_the_backends_through_the_seam():
    assert ops.serving(CPU)[-1] == "torch" and "cupy" not in ops.serving(CPU)
    assert ("native" in ops.serving(CPU)) == ops.availability("native")[0]

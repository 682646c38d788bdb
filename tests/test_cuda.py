"""StructDropLSTM on a CUDA device against the float64 CPU reference; skipped without a GPU."""
import cuda_emulator
import pytest
import torch

from onmt_structdrop import MASK_MODES, StructDropLSTM
from onmt_structdrop.reference import reference_lstm

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("mode", MASK_MODES)
def test_cuda_lstm_matches_cpu_reference(mode):
    torch.manual_seed(0)
    model = StructDropLSTM(6, 7, 2, dropout=0.5, recurrent_dropout=0.3, input_dropout=0.2, bidirectional=True,
                           mask_mode=mode).double().cuda()
    x = torch.randn(5, 3, 6, dtype=torch.float64, device="cuda", requires_grad=True)
    y, (h, c) = model(x)
    (y.sin().sum() + h.sum() + c.cos().sum()).backward()
    params = {k: v.detach().cpu().clone().requires_grad_() for k, v in model.named_parameters()}
    masks = {"input": [m if m is None else m.cpu() for m in model.last_masks["input"]],
             "recurrent": [[m if m is None else m.cpu() for m in r] for r in model.last_masks["recurrent"]]}
    x_ref = x.detach().cpu().requires_grad_()
    y_ref, (h_ref, c_ref) = reference_lstm(params, x_ref, masks, num_layers=2, bidirectional=True)
    (y_ref.sin().sum() + h_ref.sum() + c_ref.cos().sum()).backward()
    for a, e in [(y, y_ref), (h, h_ref), (c, c_ref), (x.grad, x_ref.grad)] + [
            (p.grad, params[k].grad) for k, p in model.named_parameters()]:
        torch.testing.assert_close(a.cpu(), e, rtol=1e-9, atol=1e-9)


def test_cuda_float32_training_step():
    model = StructDropLSTM(64, 128, 2, dropout=0.5, recurrent_dropout=0.5, mask_mode="pool").cuda()
    x = torch.randn(12, 8, 64, device="cuda", requires_grad=True)
    y, (h, c) = model(x)
    y.square().mean().backward()
    params = {k: v.detach().double().cpu().requires_grad_() for k, v in model.named_parameters()}
    masks = {"input": [m if m is None else m.double().cpu() for m in model.last_masks["input"]],
             "recurrent": [[m if m is None else m.double().cpu() for m in r] for r in model.last_masks["recurrent"]]}
    x_ref = x.detach().double().cpu().requires_grad_()
    y_ref, _ = reference_lstm(params, x_ref, masks, num_layers=2)
    y_ref.square().mean().backward()
    tol = dict(rtol=2e-3, atol=2e-4)  # float32, and TF32 where torch lets cuDNN use it
    torch.testing.assert_close(y.double().cpu(), y_ref, **tol)
    torch.testing.assert_close(x.grad.double().cpu(), x_ref.grad, **tol)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad.double().cpu(), params[name].grad, **tol, msg=name)


def _cupy_or_skip():
    return pytest.importorskip("cupy")


def _launch(name, function, grid, block, args):
    _cupy_or_skip()
    from onmt_structdrop.ops import cupy_backend
    cupy_backend.launch(name, function, grid, block, torch.device("cuda", torch.cuda.current_device()), *args)
    torch.cuda.synchronize()


@pytest.mark.parametrize("M, n, n_out, k", [(1, 5, 3, 1), (37, 50, 29, 17), (64, 130, 77, 130), (20, 64, 48, 33)])
def test_compact_matmul_kernels_match_torch(M, n, n_out, k):
    _cupy_or_skip()
    import numpy as np
    g = torch.Generator().manual_seed(M + k)
    a = torch.randn(M, n, generator=g).cuda()
    wt = torch.randn(n, n_out, generator=g).cuda()
    dout = torch.randn(M, n_out, generator=g).cuda()
    keep = torch.randperm(n, generator=g)[:k].sort().values.cuda()
    tile = 16
    out = torch.zeros(M, n_out, device="cuda")
    _launch("compact_matmul", "gather_k_matmul", ((n_out + tile - 1) // tile, (M + tile - 1) // tile), (tile, tile),
            (a, wt, keep, None, out, np.int32(M), np.int32(n), np.int32(n_out), np.int32(k), np.float32(1.5),
             np.float32(0.0)))
    torch.testing.assert_close(out, 1.5 * a[:, keep] @ wt[keep], rtol=1e-5, atol=1e-4)
    mult = torch.rand(k, device="cuda")
    _launch("compact_matmul", "gather_k_matmul", ((n_out + tile - 1) // tile, (M + tile - 1) // tile), (tile, tile),
            (a, wt, keep, mult, out, np.int32(M), np.int32(n), np.int32(n_out), np.int32(k), np.float32(1.0),
             np.float32(1.0)))
    torch.testing.assert_close(out, 1.5 * a[:, keep] @ wt[keep] + (a[:, keep] * mult) @ wt[keep], rtol=1e-5,
                               atol=1e-4)
    da = torch.zeros(M, n, device="cuda")
    _launch("compact_matmul", "scatter_k_matmul_t", ((k + tile - 1) // tile, (M + tile - 1) // tile), (tile, tile),
            (dout, wt, keep, None, da, np.int32(M), np.int32(n), np.int32(n_out), np.int32(k), np.float32(1.0)))
    ref = torch.zeros(M, n, device="cuda")
    ref[:, keep] = dout @ wt[keep].t()
    torch.testing.assert_close(da, ref, rtol=1e-5, atol=1e-4)
    dwt = torch.ones(n, n_out, device="cuda")
    _launch("compact_matmul", "accumulate_k_weight", ((n_out + tile - 1) // tile, (k + tile - 1) // tile),
            (tile, tile), (a, dout, keep, None, dwt, np.int32(M), np.int32(n), np.int32(n_out), np.int32(k),
                           np.float32(1.0)))
    ref = torch.ones(n, n_out, device="cuda")
    ref[keep] += a[:, keep].t() @ dout
    torch.testing.assert_close(dwt, ref, rtol=1e-5, atol=1e-4)


def test_lstm_pointwise_kernels_match_the_cpu_function():
    _cupy_or_skip()
    import numpy as np
    from onmt_structdrop.functions import lstm_cell as lstm_pointwise
    B, H = 7, 13
    g = torch.Generator().manual_seed(0)
    gates, c_prev = torch.randn(B, 4 * H, generator=g), torch.randn(B, H, generator=g)
    dh, dc = torch.randn(B, H, generator=g), torch.randn(B, H, generator=g)
    G, C = gates.clone().requires_grad_(), c_prev.clone().requires_grad_()
    h_ref, c_ref = lstm_pointwise(G, C)
    (h_ref * dh + c_ref * dc).sum().backward()
    act, cp = gates.cuda(), c_prev.cuda()
    c, tc, h = (torch.empty(B, H, device="cuda") for _ in range(3))
    blocks = ((B * H + 127) // 128,)
    _launch("lstm_pointwise", "lstm_pointwise_forward", blocks, (128,), (act, cp, c, tc, h, np.int32(B), np.int32(H)))
    torch.testing.assert_close(h.cpu(), h_ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c.cpu(), c_ref.detach(), rtol=1e-5, atol=1e-6)
    dgates, dc_prev = torch.empty(B, 4 * H, device="cuda"), torch.empty(B, H, device="cuda")
    _launch("lstm_pointwise", "lstm_pointwise_backward", blocks, (128,),
            (act, cp, tc, dh.cuda(), dc.cuda(), dgates, dc_prev, np.int32(B), np.int32(H)))
    torch.testing.assert_close(dgates.cpu(), G.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dc_prev.cpu(), C.grad, rtol=1e-5, atol=1e-6)


# ---- the cupy backend's primitives against float64 math --------------------------
ROUTES = ("cublas", "kernels")  # cupy_backend.ROUTES: its product routes


def _trial(monkeypatch, route="cublas"):
    _cupy_or_skip()
    from onmt_structdrop import ops
    from onmt_structdrop.ops import cupy_backend
    monkeypatch.setenv("ONMT_STRUCTDROP_CUPY", "on")
    monkeypatch.setattr(cupy_backend, "ROUTE", cupy_backend.ROUTES[route])
    monkeypatch.setenv(ops.ENV, "cupy")
    ops.availability.cache_clear()
    backend = ops.select("primitives", torch.zeros(1, device="cuda"))
    assert backend.NAME == "cupy"
    return backend


F32 = dict(rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("mode", ["time", "pool", "batch", "rbd", "explicit", "k=1", "k=n"])
@pytest.mark.parametrize("M, n, n_out", [(1, 5, 3), (37, 50, 29), (64, 130, 77)])
def test_cupy_primitives_match_float64_math(mode, M, n, n_out, route, monkeypatch):
    from onmt_structdrop import ops
    from onmt_structdrop.masks import mask_from_dense, sample_mask
    be = _trial(monkeypatch, route)
    g = torch.Generator().manual_seed(M + n)
    if mode == "explicit":  # uneven values, one step keeping nothing
        dense = torch.rand(4, n, generator=g, dtype=torch.float64) * (torch.rand(4, n, generator=g) > 0.4)
        dense[1] = 0
        mask = mask_from_dense(dense)
    else:
        p = {"k=1": 1 - 1 / n + 1e-6, "k=n": 1e-6}.get(mode, 0.4)  # p = 0 would draw no mask at all
        mask = sample_mask(mode if "=" not in mode else "time", p, n, 4, generator=g, batch=M, pool_size=2)
    mask = ops.pack(mask, torch.device("cuda"), torch.float32)
    dense = mask.dense(torch.float64)
    wt64 = torch.randn(n, n_out, generator=g, dtype=torch.float64)
    wt = wt64.float().cuda()
    for t in range(mask.steps):
        keep, mult = mask.kept(mask.step_sets[t])
        rows = be.kept_rows(wt, keep)
        a64, dout64, out64 = (torch.randn(*s, generator=g, dtype=torch.float64)
                              for s in ((M, n), (M, n_out), (M, n_out)))
        a, dout = a64.float().cuda(), dout64.float().cuda()
        m = dense[t].cpu()
        out = be.kept_product(out64.float().cuda(), a, keep, mult, rows, 0.5)
        torch.testing.assert_close(out.cpu().double(), out64 + 0.5 * (a64 * m) @ wt64, **F32)
        da = be.kept_input_grad(torch.full((M, n), float("nan"), device="cuda"), dout, keep, mult, rows)
        torch.testing.assert_close(da.cpu().double(), (dout64 @ wt64.t()) * m, **F32)  # dropped columns: zero
        dwt = be.add_kept_rows_grad(torch.ones(n, n_out, device="cuda"), a, dout, keep, mult, 0.5)
        torch.testing.assert_close(dwt.cpu().double(), 1 + 0.5 * (a64 * m).t() @ dout64, **F32)


@pytest.mark.parametrize("B, H", [(1, 1), (5, 37), (64, 256)])
def test_cupy_cell_matches_float64_autograd(B, H, monkeypatch):
    from onmt_structdrop.functions import LSTMCellFunction
    be = _trial(monkeypatch)
    g = torch.Generator().manual_seed(B * H)
    gates, c_prev, dh, dc = (torch.randn(*s, generator=g, dtype=torch.float64)
                             for s in ((B, 4 * H), (B, H), (B, H), (B, H)))
    G, C = gates.clone().requires_grad_(), c_prev.clone().requires_grad_()
    i, f, gg, o = G.chunk(4, 1)
    c_ref = f.sigmoid() * C + i.sigmoid() * gg.tanh()
    h_ref = o.sigmoid() * c_ref.tanh()
    (h_ref * dh + c_ref * dc).sum().backward()
    G2, C2 = gates.float().cuda().requires_grad_(), c_prev.float().cuda().requires_grad_()
    h, c = LSTMCellFunction.apply(G2, C2)
    (h * dh.float().cuda() + c * dc.float().cuda()).sum().backward()
    for actual, expected in [(h, h_ref), (c, c_ref), (G2.grad, G.grad), (C2.grad, C.grad)]:
        torch.testing.assert_close(actual.cpu().double(), expected.detach(), rtol=1e-5, atol=1e-6)
    in_place = gates.float().cuda()
    act, *_ = be.cell_forward(in_place, c_prev.float().cuda(), act=in_place)
    assert act is in_place


@pytest.mark.parametrize("route", ROUTES)
def test_cupy_step_products_train_the_input_feed_decoder_as_torch_does(route, monkeypatch):
    """The decoder's step products and cell on the cupy kernels give the torch backend's outputs and gradients."""
    from onmt_structdrop.functions import StepProduct
    from onmt_structdrop.masks import sample_mask
    from onmt_structdrop import ops
    g = torch.Generator().manual_seed(5)
    mask = ops.pack(sample_mask("time", 0.3, 40, 6, generator=g), torch.device("cuda"), torch.float32)
    weight = torch.randn(24, 40, generator=g).cuda().requires_grad_()
    xs = [torch.randn(8, 40, generator=g).cuda().requires_grad_() for _ in range(6)]
    results = {}
    for name in ("torch", "cupy"):
        if name == "cupy":
            _trial(monkeypatch, route)
        else:
            monkeypatch.setenv(ops.ENV, "torch")
        for t in [weight, *xs]:
            t.grad = None
        product = StepProduct(weight, mask)
        loss = sum((product(x, t).tanh() * (t + 1)).sum() for t, x in enumerate(xs))
        loss.backward()
        results[name] = [loss.detach(), weight.grad.clone(), *(x.grad.clone() for x in xs)]
    for actual, expected in zip(results["cupy"], results["torch"]):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("mode", ["time", "pool", "batch", "rbd", "tbd", "bernoulli"])
def test_cupy_layer_matches_the_float64_reference(mode, route, monkeypatch):
    """StructDropLSTM on the cupy kernels (float32, two layers, both directions) against the CPU float64 reference
    with the same masks, gradients included; the kernels served the layer (not the torch backend)."""
    from onmt_structdrop.ops import cupy_backend
    _trial(monkeypatch, route)
    served = []
    monkeypatch.setattr(cupy_backend, "lstm_layer_forward", _recording(cupy_backend.lstm_layer_forward, served))
    torch.manual_seed(1)
    model = StructDropLSTM(24, 40, 2, dropout=0.4, recurrent_dropout=0.3, input_dropout=0.2, bidirectional=True,
                           mask_mode=mode).cuda()
    x = torch.randn(9, 5, 24, device="cuda", requires_grad=True)
    y, (h, c) = model(x)
    (y.sin().sum() + h.sum() + c.cos().sum()).backward()
    assert len(served) == 4  # two layers, two directions
    params = {k: v.detach().double().cpu().requires_grad_() for k, v in model.named_parameters()}
    masks = {"input": [m if m is None else m.cpu() for m in model.last_masks["input"]],
             "recurrent": [[m if m is None else m.cpu() for m in r] for r in model.last_masks["recurrent"]]}
    x_ref = x.detach().double().cpu().requires_grad_()
    y_ref, (h_ref, c_ref) = reference_lstm(params, x_ref, masks, num_layers=2, bidirectional=True)
    (y_ref.sin().sum() + h_ref.sum() + c_ref.cos().sum()).backward()
    for a, e in [(y, y_ref), (h, h_ref), (c, c_ref), (x.grad, x_ref.grad)] + [
            (p.grad, params[k].grad) for k, p in model.named_parameters()]:
        torch.testing.assert_close(a.double().cpu(), e, rtol=1e-4, atol=1e-4)


def _recording(function, calls):
    def recorded(*args):
        calls.append(function.__name__)
        return function(*args)
    return recorded


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("mode", ["time", "pool", "bernoulli"])
def test_cupy_layer_graphs_equal_eager_runs(mode, route, monkeypatch):
    """The layer's CUDA graphs, replayed with new inputs and masks, give what eager runs give."""
    from onmt_structdrop.ops import cuda_graphs, cupy_backend
    _trial(monkeypatch, route)
    monkeypatch.setattr(cupy_backend, "GRAPHS", cuda_graphs.GraphCache())
    model = StructDropLSTM(24, 40, 2, dropout=0.4, recurrent_dropout=0.3, bidirectional=True, mask_mode=mode).cuda()
    results = cuda_emulator.graphed_and_eager_runs(model, lambda: torch.randn(9, 5, 24, device="cuda"), monkeypatch)
    for graphed, eager in zip(results["1"], results["0"]):
        for a, e in zip(graphed, eager):
            torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-6)
    assert cupy_backend.GRAPHS.captures >= 8 and len(cupy_backend.GRAPHS.graphs) >= 8


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cupy_layer_in_half_precision_is_as_close_to_the_reference_as_the_torch_backend(dtype, monkeypatch):
    """The cublas route in bfloat16 and float16 (cuBLAS products, the cell in torch): its error against the float64
    reference with the same masks stays within a few times the torch backend's own error in that dtype."""
    from onmt_structdrop import ops
    from onmt_structdrop.ops import cupy_backend
    torch.manual_seed(2)
    model = StructDropLSTM(24, 40, 2, dropout=0.4, recurrent_dropout=0.3, bidirectional=True, mask_mode="time")
    model = model.cuda().to(dtype)
    x = torch.randn(9, 5, 24, device="cuda", dtype=dtype)
    masks = model.sample_masks(9, 5)
    errors, y_ref = {}, None
    for backend in ("torch", "cupy"):
        if backend == "cupy":
            served = []
            _trial(monkeypatch, "cublas")
            monkeypatch.setattr(cupy_backend, "lstm_layer_forward", _recording(cupy_backend.lstm_layer_forward, served))
        else:
            monkeypatch.setenv(ops.ENV, "torch")
        y, _ = model(x, masks=masks)
        if y_ref is None:  # the masks as the layers applied them
            params = {k: v.detach().double().cpu() for k, v in model.named_parameters()}
            masks_ref = {"input": [m if m is None else m.cpu() for m in model.last_masks["input"]],
                         "recurrent": [[m if m is None else m.cpu() for m in r] for r in model.last_masks["recurrent"]]}
            y_ref, _ = reference_lstm(params, x.double().cpu(), masks_ref, num_layers=2, bidirectional=True)
        errors[backend] = float((y.detach().double().cpu() - y_ref).abs().max())
    assert served, "the cupy backend did not serve the layer"
    assert errors["cupy"] <= 4 * errors["torch"] + 1e-3, errors


def test_time_masks_are_drawn_on_the_device_without_waiting_for_the_host():
    from onmt_structdrop import ops
    model = StructDropLSTM(6, 7, 2, dropout=0.5, recurrent_dropout=0.3, generator=torch.Generator().manual_seed(1))
    model.sample_masks(5, 3, "cuda")  # the device's generator is seeded once, on the host
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        masks = model.sample_masks(5, 3, "cuda")
        drawn = ops.draw_time(0.5, 1024, 50, "cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert masks["recurrent"][1][0].keep.is_cuda and drawn.keep.shape == (50, 512)
    assert (drawn.keep.diff(dim=1) > 0).all()


def test_a_time_mode_training_step_never_waits_for_the_device():
    """Masks drawn on the device, planning data on the host: forward and backward of the layer make no host
    synchronisation once its graphs are captured (the first two calls of a shape)."""
    model = StructDropLSTM(64, 128, 2, dropout=0.5, recurrent_dropout=0.5, bidirectional=True).cuda()
    x = torch.randn(12, 8, 64, device="cuda", requires_grad=True)
    for _ in range(3):
        y, _ = model(x)
        y.square().mean().backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y, _ = model(x)
        y.square().mean().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert torch.isfinite(x.grad).all()

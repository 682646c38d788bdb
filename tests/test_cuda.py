"""StructDropLSTM on a CUDA device against the float64 CPU reference; skipped without a GPU."""
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
    y, (h, c) = model(torch.randn(12, 8, 64, device="cuda"))
    y.square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def _cupy_or_skip():
    return pytest.importorskip("cupy")


def _launch(name, function, grid, block, args):
    cupy = _cupy_or_skip()
    from onmt_structdrop.ops import cupy_backend as cuda_kernels
    with cupy.cuda.ExternalStream(torch.cuda.current_stream().cuda_stream):
        cuda_kernels.kernel(name, function)(grid, block, args)
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
            (a, wt, keep, out, np.int32(M), np.int32(n), np.int32(n_out), np.int32(k), np.float32(1.5),
             np.float32(0.0)))
    torch.testing.assert_close(out, 1.5 * a[:, keep] @ wt[keep], rtol=1e-5, atol=1e-4)
    da = torch.zeros(M, n, device="cuda")
    _launch("compact_matmul", "scatter_k_matmul_t", ((k + tile - 1) // tile, (M + tile - 1) // tile), (tile, tile),
            (dout, wt, keep, da, np.int32(M), np.int32(n), np.int32(n_out), np.int32(k), np.float32(1.0)))
    ref = torch.zeros(M, n, device="cuda")
    ref[:, keep] = dout @ wt[keep].t()
    torch.testing.assert_close(da, ref, rtol=1e-5, atol=1e-4)
    dwt = torch.ones(n, n_out, device="cuda")
    _launch("compact_matmul", "accumulate_k_weight", ((n_out + tile - 1) // tile, (k + tile - 1) // tile),
            (tile, tile), (a, dout, keep, dwt, np.int32(M), np.int32(n), np.int32(n_out), np.int32(k),
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

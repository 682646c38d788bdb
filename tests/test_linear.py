"""StructuredDropoutLinear against dropout-then-nn.Linear with the same mask (float64)."""
import pytest
import torch
from torch.nn import functional as F

from onmt_structdrop import MASK_MODES
from onmt_structdrop.masks import PATTERN_MODES
from onmt_structdrop.linear import StructuredDropoutLinear

T, B, N, OUT = 6, 4, 10, 7


@pytest.mark.parametrize("mode", MASK_MODES)
@pytest.mark.parametrize("shape", ["time-major", "batch-first", "2-d"])
@pytest.mark.parametrize("p", [0.3, 0.8])
def test_matches_dropout_then_linear(mode, shape, p):
    torch.manual_seed(0)
    layer = StructuredDropoutLinear(N, OUT, dropout=p, mask_mode=mode, batch_first=shape == "batch-first",
                                    pool_size=3).double()
    x = torch.randn(*{"time-major": (T, B, N), "batch-first": (B, T, N), "2-d": (B, N)}[shape],
                    dtype=torch.float64, requires_grad=True)
    y = layer(x)
    dy = torch.randn_like(y)
    (y * dy).sum().backward()
    m = layer.last_mask
    xt = x.unsqueeze(0) if shape == "2-d" else (x.transpose(0, 1) if shape == "batch-first" else x)
    x_ref = xt.detach().clone().requires_grad_()
    w, b = (t.detach().clone().requires_grad_() for t in (layer.weight, layer.bias))
    y_ref = F.linear(x_ref * (m.unsqueeze(1) if m.dim() == 2 else m), w, b)
    y_ref = y_ref.squeeze(0) if shape == "2-d" else (y_ref.transpose(0, 1) if shape == "batch-first" else y_ref)
    (y_ref * dy).sum().backward()
    assert (m == 0).any() or mode in PATTERN_MODES  # rbd/tbd keep every unit when dp = 1
    dx_ref = x_ref.grad.squeeze(0) if shape == "2-d" else (
        x_ref.grad.transpose(0, 1) if shape == "batch-first" else x_ref.grad)
    for a, e in [(y, y_ref), (x.grad, dx_ref), (layer.weight.grad, w.grad), (layer.bias.grad, b.grad)]:
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_eval_is_plain_linear_and_state_dict_matches_nn_linear():
    layer = StructuredDropoutLinear(N, OUT, dropout=0.5).eval()
    ref = torch.nn.Linear(N, OUT)
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(T, B, N)
    torch.testing.assert_close(layer(x), ref(x))


def test_bad_input():
    with pytest.raises(ValueError, match="dropout must be in \\[0, 1\\), got 1.2"):
        StructuredDropoutLinear(N, OUT, dropout=1.2)
    with pytest.raises(ValueError, match="out_features must be an integer >= 1, got 0"):
        StructuredDropoutLinear(N, 0)
    layer = StructuredDropoutLinear(N, OUT, dropout=0.5)
    with pytest.raises(ValueError, match="expects \\[..., 10\\] input .* got \\(6, 4, 9\\)"):
        layer(torch.randn(T, B, N - 1))
    with pytest.raises(ValueError, match="mask must have shape \\(6, 10\\) or \\(6, 4, 10\\), got \\(6, 9\\)"):
        layer(torch.randn(T, B, N), mask=torch.ones(T, N - 1))


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4, 5), (1, 5)])
def test_any_leading_dimensions_as_nn_linear(shape):
    torch.manual_seed(0)
    layer = StructuredDropoutLinear(5, 3, dropout=0.4).double()
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert y.shape == shape[:-1] + (3,)
    keep = layer.last_mask  # one step: the same units kept for every row
    assert keep.shape == (1, 5)
    expected = (x.detach() * keep[0]) @ layer.weight.detach().t() + layer.bias.detach()
    torch.testing.assert_close(y.detach(), expected, rtol=1e-12, atol=1e-12)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (keep[0] * layer.weight.detach().sum(0)).expand_as(x), rtol=1e-12,
                               atol=1e-12)
    layer.eval()
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))


@pytest.mark.parametrize("compact", [False, True])
def test_weight_gradient_comes_in_the_weight_layout(compact):
    # a gradient laid out otherwise than its parameter is copied by autograd (4 ms of a PTB step at 200 -> 10000);
    # 12 steps: a fresh kept set each, enough for the native engine to serve the compacted product where built
    layer = StructuredDropoutLinear(N, OUT, dropout=0.5, compact=compact)
    strides = []
    layer.weight.register_hook(lambda grad: strides.append(grad.stride()))  # as computed, before accumulation
    layer(torch.randn(12, B, N)).sum().backward()
    assert strides == [layer.weight.stride()]

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

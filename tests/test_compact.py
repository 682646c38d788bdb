"""Each compacted product against the dense product with the same mask (float64)."""
import pytest
import torch

from onmt_structdrop.compact import KeptRows, project, project_backward, step_order
from onmt_structdrop.masks import mask_from_dense, sample_mask

T, B, N, OUT = 7, 3, 9, 11


def _masks():
    g = torch.Generator().manual_seed(0)
    explicit = torch.rand(T, N, generator=g, dtype=torch.float64) * (torch.rand(T, N, generator=g) > 0.4)
    return {
        "time": sample_mask("time", 0.5, N, T, generator=g),
        "pool-of-all": sample_mask("pool", 0.4, N, T, generator=g, pool_size=N),
        "pool": sample_mask("pool", 0.6, N, T, generator=g, pool_size=3),
        "batch": sample_mask("batch", 0.3, N, T, generator=g),
        "k=1": sample_mask("time", 0.95, N, T, generator=g),
        "explicit": mask_from_dense(explicit),
    }


MASKS = _masks()


@pytest.mark.parametrize("name", list(MASKS))
def test_kept_rows_products_match_dense(name):
    mask = MASKS[name]
    g = torch.Generator().manual_seed(1)
    wt = torch.randn(N, OUT, generator=g, dtype=torch.float64)
    dense = mask.dense(torch.float64)
    rows = KeptRows(wt, mask)
    grad = torch.zeros_like(wt)
    for t in range(T):
        grp = mask.step_group[t]
        a = torch.randn(B, N, generator=g, dtype=torch.float64)
        dout = torch.randn(B, OUT, generator=g, dtype=torch.float64)
        out = torch.randn(B, OUT, generator=g, dtype=torch.float64)
        expected = out + (a * dense[t]) @ wt
        a_k = rows.gather(a, grp)
        torch.testing.assert_close(rows.matmul(out.clone(), a_k, grp), expected, rtol=1e-12, atol=1e-12)
        da = torch.full((B, N), float("nan"), dtype=torch.float64)
        rows.scatter_input_grad(dout, grp, da)
        torch.testing.assert_close(da, (dout @ wt.t()) * dense[t], rtol=1e-12, atol=1e-12)
        rows.accumulate_grad(a_k, dout, grp)
        grad += (a * dense[t]).t() @ dout
    torch.testing.assert_close(rows.weight_grad(), grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(MASKS) + ["dense", "none"])
def test_project_and_its_backward_match_dense(name):
    g = torch.Generator().manual_seed(2)
    mask = MASKS.get(name)
    if name == "dense":
        mask = torch.rand(T, B, N, generator=g, dtype=torch.float64)
    dense = (torch.ones(T, 1, N, dtype=torch.float64) if mask is None else
             mask if name == "dense" else mask.dense(torch.float64).unsqueeze(1))
    a = torch.randn(T, B, N, generator=g, dtype=torch.float64)
    wt = torch.randn(N, OUT, generator=g, dtype=torch.float64)
    dout = torch.randn(T, B, OUT, generator=g, dtype=torch.float64)
    pos = step_order(mask, T)
    assert sorted(pos) == list(range(T))
    out = torch.zeros(T, B, OUT, dtype=torch.float64)
    rows = project(a, wt, mask, out)
    expected = (a * dense) @ wt
    torch.testing.assert_close(out[pos], expected, rtol=1e-12, atol=1e-12)
    # the gradient may arrive in any step order: in mask order and in time order
    for order in (pos, list(range(T))):
        stored = torch.empty_like(dout)
        stored[order] = dout
        da, dwt = project_backward(a, wt, mask, stored, order, rows)
        torch.testing.assert_close(da, (dout @ wt.t()) * dense, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(dwt, ((a * dense).reshape(-1, N).t() @ dout.reshape(-1, OUT)),
                                   rtol=1e-12, atol=1e-12)

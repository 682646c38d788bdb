"""The native engine: its kernels for every instruction set this CPU runs, against float64 math, and how the
package behaves without it. The seam's test matrix (test_ops.py) checks it on every mask mode and shape."""
import logging
import os
import subprocess
import sys

import pytest
import torch

from onmt_structdrop import StructDropLSTM, ops
from onmt_structdrop.masks import sample_mask
from onmt_structdrop.ops import native_backend

native, why = native_backend.extension()
needs_native = pytest.mark.skipif(native is None, reason=f"native backend not built: {why}")
ISAS = ("avx512", "avx2", "base")


@pytest.fixture(params=ISAS)
def isa(request):
    """Run the kernels built for one instruction set (skipped where the CPU lacks it)."""
    default = native.isa()
    try:
        native.set_isa(request.param)
    except RuntimeError as err:
        pytest.skip(str(err))
    yield request.param
    native.set_isa(default)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
# (150, 40, 70): from 128 rows on the products gather the kept rows and run as library products
@pytest.mark.parametrize("M,k,N", [(1, 1, 1), (5, 7, 13), (13, 0, 70), (20, 33, 130), (7, 64, 257), (150, 40, 70),
                                   (150, 0, 9)])
def test_kept_products_match_dense_math(isa, dtype, M, k, N):
    """The step primitives of the seam's contract (what the input-feed decoder and the product benchmark run)."""
    g = torch.Generator().manual_seed(M * 100 + k)
    n = k + 5
    keep = torch.randperm(n, generator=g)[:k].contiguous()
    values = torch.rand(k, generator=g, dtype=torch.float64) + 0.5
    wt = torch.randn(n, N, generator=g, dtype=torch.float64)
    a, dout = torch.randn(M, n, generator=g, dtype=torch.float64), torch.randn(M, N, generator=g, dtype=torch.float64)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    for mult, m in ((1.5, 1.5), (values.to(dtype), values)):
        start = torch.randn(M, N, generator=g, dtype=torch.float64)
        out = start.to(dtype, copy=True)
        rows = native_backend.kept_rows(wt.to(dtype), keep)
        native_backend.kept_product(out, a.to(dtype), keep, mult, rows)
        torch.testing.assert_close(out.double(), start + (a[:, keep] * m) @ wt[keep], **tol)
        grad = torch.full((M, n), float("nan"), dtype=dtype)
        native_backend.kept_input_grad(grad, dout.to(dtype), keep, mult, rows)
        expected = torch.zeros(M, n, dtype=torch.float64)
        expected[:, keep] = (dout @ wt[keep].t()) * m
        torch.testing.assert_close(grad.double(), expected, **tol)  # the dropped columns are zero
        dwt = torch.ones(n, N, dtype=dtype)
        native_backend.add_kept_rows_grad(dwt, a.to(dtype), dout.to(dtype), keep, mult)
        expected = torch.ones(n, N, dtype=torch.float64)
        expected[keep] += (a[:, keep] * m).t() @ dout
        torch.testing.assert_close(dwt.double(), expected, **tol)  # the dropped rows are untouched


@needs_native
def test_the_weight_gradient_is_the_same_on_any_thread_count(isa):
    # each thread sweeps the kept rows from a start of its own; every sum is still taken in the same order
    g = torch.Generator().manual_seed(3)
    n, N, M = 650, 2600, 20
    keep = torch.randperm(n, generator=g)[:325].sort().values
    a, dout = torch.randn(M, n, generator=g), torch.randn(M, N, generator=g)
    threads = torch.get_num_threads()
    grads = []
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            grads.append(native_backend.add_kept_rows_grad(torch.ones(n, N), a, dout, keep, 1.0))
    finally:
        torch.set_num_threads(threads)
    expected = torch.ones(n, N, dtype=torch.float64)
    expected[keep] += a[:, keep].double().t() @ dout.double()
    torch.testing.assert_close(grads[0].double(), expected, rtol=1e-4, atol=1e-4)
    assert all(torch.equal(grads[0], other) for other in grads[1:])


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("N", [7, 300])  # 300: blocks of columns and a last vector cut short
def test_sequence_products_of_every_instruction_set_match_dense_math(isa, dtype, N):
    """A masked linear map of a sequence (the output layer): product, input, weight and bias gradients."""
    g = torch.Generator().manual_seed(N)
    T, B, n = 9, 5, 23
    mask = ops.pack(sample_mask("time", 0.4, n, T, batch=B, generator=g), torch.device("cpu"), dtype)
    full = mask.dense(torch.float64).unsqueeze(1)
    a, dout = torch.randn(T, B, n, generator=g, dtype=torch.float64), torch.randn(T, B, N, generator=g,
                                                                                 dtype=torch.float64)
    w, bias = torch.randn(N, n, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64)
    out, saved = native_backend.sequence_product(a.to(dtype), w.to(dtype).t(), mask, bias.to(dtype))
    da, dwt, db = native_backend.sequence_backward(a.to(dtype), w.to(dtype).t(), mask, dout.to(dtype), True, saved,
                                                   True)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.double(), (a * full) @ w.t() + bias, **tol)
    torch.testing.assert_close(da.double(), (dout @ w) * full, **tol)
    torch.testing.assert_close(dwt.double(), (a * full).reshape(-1, n).t() @ dout.reshape(-1, N), **tol)
    torch.testing.assert_close(db.double(), dout.sum(dim=(0, 1)), **tol)


@needs_native
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_layer_of_every_instruction_set_matches_the_torch_backend(isa, dtype, monkeypatch):
    """A bidirectional packed layer with H = 21 (padded to two chunks of units) in ``time`` mode."""
    torch.manual_seed(0)
    model = StructDropLSTM(6, 21, 2, dropout=0.5, recurrent_dropout=0.3, input_dropout=0.2, bidirectional=True,
                           mask_mode="time").to(dtype)
    x = torch.randn(12, 3, 6, dtype=dtype)
    lengths = torch.tensor([12, 7, 9])
    masks = model.sample_masks(12, 3)
    results = {}
    for name in ("torch", "native"):
        monkeypatch.setenv(ops.ENV, name)
        model.zero_grad()
        xs = x.clone().requires_grad_()
        packed = torch.nn.utils.rnn.pack_padded_sequence(xs, lengths, enforce_sorted=False)
        out, (h, c) = model(packed, masks=masks)
        out = torch.nn.utils.rnn.pad_packed_sequence(out)[0]
        (out.sin().sum() + h.sum() + c.square().sum()).backward()
        results[name] = [out, h, c, xs.grad] + [p.grad for p in model.parameters()]
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for actual, expected in zip(results["native"], results["torch"]):
        torch.testing.assert_close(actual, expected, **tol)


@needs_native
def test_unknown_or_missing_instruction_sets_are_refused():
    with pytest.raises(RuntimeError, match="set_isa: the instruction set must be avx512, avx2 or base; got sse9"):
        native.set_isa("sse9")
    run = subprocess.run([sys.executable, "-c", "import torch, onmt_structdrop._native as n; n.isa()"],
                         env={**os.environ, "ONMT_STRUCTDROP_ISA": "sse9"}, capture_output=True, text=True)
    assert run.returncode != 0 and "ONMT_STRUCTDROP_ISA: the instruction set must be avx512, avx2 or base; got " \
        "sse9" in run.stderr


@needs_native
def test_the_step_primitives_refuse_mismatched_operands():
    wt, keep = torch.randn(6, 4), torch.tensor([0, 5])
    with pytest.raises(RuntimeError, match="keep holds a unit outside \\[0, 6\\)"):
        native_backend.kept_product(torch.zeros(3, 4), torch.randn(3, 6), torch.tensor([0, 6]), 1.0, wt)
    with pytest.raises(RuntimeError, match="got \\[3, 5\\] for one of them"):
        native_backend.kept_product(torch.zeros(3, 5), torch.randn(3, 6), keep, 1.0, wt)
    with pytest.raises(RuntimeError, match="keep must be 1-D int64"):
        native_backend.add_kept_rows_grad(torch.zeros(6, 4), torch.randn(3, 6), torch.randn(3, 4), keep.int(), 1.0)


def test_without_the_extension_the_torch_backend_serves_and_says_why(monkeypatch, caplog):
    monkeypatch.setattr(native_backend, "extension", lambda: (None, "the C++ extension is not built (test)"))
    ops.availability.cache_clear()
    try:
        with caplog.at_level(logging.INFO, logger="onmt_structdrop.ops"):
            model = StructDropLSTM(4, 5, dropout=0.5, input_dropout=0.5, recurrent_dropout=0.5)
            y, _ = model(torch.randn(20, 2, 4))
        assert y.shape == (20, 2, 5)
        lines = [r.getMessage() for r in caplog.records if "native" in r.getMessage()]
        assert lines == ["onmt_structdrop: the native backend is not available: the C++ extension is not built "
                         "(test)"]
    finally:
        ops.availability.cache_clear()


@needs_native
def test_the_dispatch_gives_native_the_plans_it_is_fast_on():
    def plan(mode, steps):
        model = StructDropLSTM(4, 5, dropout=0.5, input_dropout=0.5, recurrent_dropout=0.5, mask_mode=mode)
        masks = model.sample_masks(steps, 2)
        prepare = lambda m: ops.prepare(m, torch.device("cpu"), torch.float32)  # noqa: E731
        return ops.LayerPlan(prepare(masks["input"][0]), prepare(masks["recurrent"][0][0]), None, False)

    x = torch.zeros(1)
    assert ops.select("lstm_layer", x, plan("time", 30)).NAME == "native"
    assert ops.select("lstm_layer", x, plan("time", 3)).NAME == "native"  # a fresh set per step, however few
    assert ops.select("lstm_layer", x, plan("pool", 30)).NAME == "torch"  # a few sets shared by the steps
    assert ops.select("lstm_layer", x, plan("batch", 30)).NAME == "torch"  # one kept set: sequence-wide products
    assert ops.select("lstm_layer", x.double(), plan("time", 30)).NAME == "native"
    assert ops.select("lstm_layer", x.bfloat16(), plan("time", 30)).NAME == "torch"
    assert ops.select("primitives", x).NAME == "native"  # step loops: the kept products read rows in place
    assert ops.select("primitives", x.bfloat16()).NAME == "torch"

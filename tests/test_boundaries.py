"""The modules' boundary through the Python API as the README shows it: every input that cannot be served gives
one clear error naming the bad value, and every one that can gives the right result."""
import pytest
import torch

import onmt_structdrop
from onmt_structdrop import StructDropLSTM, StructuredDropoutLinear, StructuredMask
from onmt_structdrop.masks import PatternOptions
from onmt_structdrop.reference import reference_lstm

BACKENDS = ["torch", "native"]


def layer(**kwargs):
    return StructDropLSTM(4, 6, 2, input_dropout=0.5, dropout=0.5, recurrent_dropout=0.3, **kwargs)


def test_the_modules_import_from_the_package():
    assert onmt_structdrop.StructuredDropoutLinear is StructuredDropoutLinear
    assert "StructuredDropoutLinear" in onmt_structdrop.__all__


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_kept_index_past_the_width_is_refused_before_any_kernel(backend):
    """It used to segfault the native engine (exit 139) and read out of bounds silently when negative."""
    from onmt_structdrop import ops
    if not ops.availability(backend)[0]:
        pytest.skip(f"{backend} not available")
    model, x = layer(), torch.randn(3, 2, 4)
    for unit in (4, -1, 2 ** 40):
        bad = StructuredMask(4, 3, [torch.tensor([0, unit])], [torch.arange(3)], scale=2.0)
        with ops.preferred(backend), pytest.raises(ValueError, match=rf"^masks\['input'\]\[0\]: keep\[0\] holds unit "
                                                                     rf"{unit}, outside \[0, 4\)"):
            model(x, masks={"input": [bad, None], "recurrent": [[None], [None]]})


def test_a_mask_of_fewer_steps_than_the_sequence_is_refused():
    short = StructuredMask(6, 2, [torch.tensor([1, 2])] * 2, [torch.tensor([0]), torch.tensor([1])], scale=3.0)
    with pytest.raises(ValueError, match=r"masks\['recurrent'\]\[0\]\[0\] covers 2 steps, the sequence has 3"):
        layer()(torch.randn(3, 2, 4), masks={"input": [None, None], "recurrent": [[short], [None]]})


def test_an_explicit_structured_mask_on_the_linear_layer_is_checked_and_exact():
    lin = StructuredDropoutLinear(5, 3, dropout=0.5).double()
    x = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match=r"^mask: keep\[0\] lists a unit more than once"):
        lin(x, mask=StructuredMask(5, 2, [torch.tensor([1, 1])], [torch.arange(2)], scale=2.0))
    mask = StructuredMask(5, 2, [torch.tensor([0, 3], dtype=torch.int32), torch.tensor([4])],
                          [torch.tensor([1]), torch.tensor([0])], scale=2.0)
    y = lin(x, mask=mask)
    dense = torch.zeros(2, 5, dtype=torch.float64)
    dense[1, [0, 3]] = 2.0
    dense[0, 4] = 2.0
    torch.testing.assert_close(y, (x * dense[:, None]) @ lin.weight.t() + lin.bias)


def test_masks_of_other_types_name_the_type():
    with pytest.raises(TypeError, match=r"masks\['input'\]\[1\] must be None, a StructuredMask or a tensor, got list"):
        layer()(torch.randn(3, 2, 4), masks={"input": [None, [[1.0]]], "recurrent": [[None], [None]]})


def test_a_generator_of_the_wrong_kind_is_refused_at_construction():
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int"):
        StructDropLSTM(4, 6, generator=1234)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got str"):
        StructuredDropoutLinear(4, 6, generator="seed")


def test_a_tile_size_that_does_not_divide_a_width_is_refused_at_construction():
    with pytest.raises(ValueError, match="tbd tile_size 4 does not divide the width 6"):
        StructDropLSTM(4, 6, mask_mode="tbd", pattern=PatternOptions(tile_size=4))
    with pytest.raises(ValueError, match="tbd tile_size 3 does not divide the width 4"):
        StructuredDropoutLinear(4, 6, mask_mode="tbd", pattern=PatternOptions(tile_size=3))
    StructDropLSTM(8, 4, mask_mode="tbd", pattern=PatternOptions(tile_size=4))  # divides 8 and 4


@pytest.mark.parametrize("mode", ["time", "batch", "pool", "tbd", "bernoulli"])
@pytest.mark.parametrize("shape", [(0, 3, 8), (4, 0, 8), (0, 8)])
def test_the_linear_layer_on_an_empty_input_is_nn_linear(mode, shape):
    lin = StructuredDropoutLinear(8, 5, dropout=0.5, mask_mode=mode)
    x = torch.randn(*shape, requires_grad=True)
    y = lin(x)
    assert y.shape == (*shape[:-1], 5)
    y.sum().backward()
    assert lin.weight.grad is not None and not lin.weight.grad.any()


@pytest.mark.parametrize("make", [layer, lambda: StructuredDropoutLinear(4, 3, dropout=0.5)])
def test_double_backward_through_a_training_forward_is_refused(make):
    """A gradient penalty used to get first-order gradients without a graph, so it contributed nothing."""
    module = make()
    out = module(torch.randn(3, 2, 4))
    out = out[0] if isinstance(out, tuple) else out
    weight = next(module.parameters())
    with pytest.raises(RuntimeError, match="first-order gradients only: create_graph=True"):
        torch.autograd.grad(out.square().sum(), weight, create_graph=True)
    out = module(torch.randn(3, 2, 4))
    out = out[0] if isinstance(out, tuple) else out
    (grad,) = torch.autograd.grad(out.square().sum(), weight)  # first order: as before
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("make", [layer, lambda: StructuredDropoutLinear(4, 3, dropout=0.5)])
def test_tracing_and_vmap_of_a_training_forward_are_refused_and_eval_traces(make):
    module, x = make(), torch.randn(3, 2, 4)
    with pytest.raises(RuntimeError, match="jit.trace of a training forward with dropout would replay"):
        torch.jit.trace(module, (x,), check_trace=False)
    with pytest.raises(RuntimeError, match="does not run under torch.func.vmap"):
        torch.func.vmap(lambda v: module(v)[0])(torch.randn(2, 3, 2, 4))
    module.eval()
    traced = torch.jit.trace(module, (x,))
    torch.testing.assert_close(traced(x), module(x))


def test_explicit_masks_in_eval_are_applied_as_given():
    """Explicit masks are applied in eval() too (as the docstring says), and match the reference."""
    torch.manual_seed(0)
    model = StructDropLSTM(4, 6).double().eval()
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    mask = StructuredMask(4, 3, [torch.tensor([0, 2]), torch.tensor([1])], [torch.tensor([0, 2]), torch.tensor([1])],
                          scale=2.0)
    out, _ = model(x, masks={"input": [mask], "recurrent": [[None]]})
    params = {k: v.detach() for k, v in model.named_parameters()}
    ref, _ = reference_lstm(params, x, {"input": [mask.dense(torch.float64)], "recurrent": [[None]]})
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)

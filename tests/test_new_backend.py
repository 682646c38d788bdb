"""A new backend is one module and one line in the dispatch. A toy backend that serves the step primitives only
(declining every other operation) is registered the way a real one is, and the seam's reference matrix runs
through it: what it serves matches the float64 reference, and what it declines goes to the next backend."""
import collections
import sys
import types

import pytest
import test_ops
import torch

from onmt_structdrop import StructDropLSTM, ops
from onmt_structdrop.masks import STRUCTURED_MODES
from onmt_structdrop.ops import torch_backend

PRIMITIVES = ("kept_rows", "add_rows", "kept_product", "kept_input_grad", "kept_rows_grad", "add_kept_rows_grad",
              "cell_forward", "cell_backward")


def toy_module(calls):
    """The module a new backend would be: its name, whether it is available, what it declines, whether compacting
    pays, and the primitives (here the torch backend's, counted)."""
    module = types.ModuleType("onmt_structdrop.ops.toy_backend")
    module.NAME = "toy"
    module.available = lambda: (True, "")
    module.details = lambda: "a test double"
    module.declines = lambda op, device, dtype, plan=None: (
        None if op == "primitives" else "the toy backend serves the step primitives only")
    module.compaction_pays = lambda op, plan: True

    def counted(name):
        def primitive(*args, **kwargs):
            calls[name] += 1
            return getattr(torch_backend, name)(*args, **kwargs)
        return primitive

    for name in PRIMITIVES:
        setattr(module, name, counted(name))
    return module


@pytest.fixture
def toy(monkeypatch):
    calls = collections.Counter()
    monkeypatch.setitem(sys.modules, "onmt_structdrop.ops.toy_backend", toy_module(calls))  # the module
    monkeypatch.setattr(ops, "BACKENDS", ("toy", *ops.BACKENDS))  # the line in the dispatch
    ops.get.cache_clear()
    ops.availability.cache_clear()
    yield calls
    ops.get.cache_clear()
    ops.availability.cache_clear()


@pytest.mark.parametrize("name", test_ops.MASKS)
def test_the_toy_backend_runs_the_primitives_matrix(toy, name, monkeypatch):
    test_ops.test_primitives_match_dense_math("toy", name, test_ops.M, monkeypatch)
    assert toy["kept_product"] and toy["kept_input_grad"] and toy["kept_rows_grad"]


@pytest.mark.parametrize("name", ["time", "batch", "explicit"])
def test_the_toy_backend_runs_the_step_products(toy, name, monkeypatch):
    test_ops.test_step_products_sum_their_steps_gradients("toy", name, monkeypatch)
    assert toy["kept_product"] and toy["add_kept_rows_grad"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_toy_backend_runs_the_cell(toy, dtype, monkeypatch):
    test_ops.test_cell_matches_autograd_of_its_equations("toy", dtype, 7, monkeypatch)
    assert toy["cell_forward"] and toy["cell_backward"]


@pytest.mark.parametrize("mode", STRUCTURED_MODES)
def test_what_the_toy_backend_declines_goes_to_the_next(toy, mode, monkeypatch):
    monkeypatch.setenv(ops.ENV, "toy")
    x = torch.zeros(1, dtype=torch.float64)
    assert ops.select("primitives", x).NAME == "toy" and ops.select("lstm_layer", x).NAME != "toy"
    assert ops.serving("cpu", torch.float64)[0] == "toy"
    torch.manual_seed(7)
    model = StructDropLSTM(4, 5, 2, dropout=0.5, recurrent_dropout=0.4, bidirectional=True,
                           mask_mode=mode).double()
    args = (torch.randn(6, 3, 4, dtype=torch.float64), torch.zeros(4, 3, 5, dtype=torch.float64),
            torch.zeros(4, 3, 5, dtype=torch.float64))
    actual = test_ops._run(model, *args, None)
    expected = test_ops._reference(model, *args, None, model.last_masks)
    assert max(test_ops._max_errors(actual, expected)) < 1e-10
    assert not toy  # the layer went to the next backend whole

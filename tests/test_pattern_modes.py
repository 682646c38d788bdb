"""Approximate random dropout (rbd, tbd): the searched pattern distribution, per-unit rates, layouts, errors.
(Outputs and gradients against the dense reference are in test_lstm/test_linear/test_opennmt_modules, which
cover every mask mode.)"""
import pytest
import torch

from onmt_structdrop import StructDropLSTM
from onmt_structdrop import ops
from onmt_structdrop.ops import torch_backend
from onmt_structdrop.masks import PatternOptions, pattern_distribution, sample_mask

N, STEPS = 32, 4000


@pytest.mark.parametrize("p", [0.3, 0.5, 0.7])
def test_distribution_reaches_the_rate_and_is_cached(p):
    probs, achieved = pattern_distribution(p, 8, 1e-4)
    assert achieved == pytest.approx(p, abs=1e-12) and sum(probs) == pytest.approx(1.0)
    assert min(probs) > 0.005  # spread over every dp, not a single pattern
    assert pattern_distribution(p, 8, 1e-4) is pattern_distribution(p, 8, 1e-4)


@pytest.mark.parametrize("mode", ["rbd", "tbd"])
@pytest.mark.parametrize("p", [0.3, 0.5, 0.7])
def test_every_unit_drops_at_rate_p_and_the_mask_has_expectation_one(mode, p):
    g = torch.Generator().manual_seed(int(p * 10))
    m = sample_mask(mode, p, N, STEPS, generator=g, pattern=PatternOptions(tile_size=4)).dense(torch.float64)
    drop = (m == 0).double().mean(0)
    # per-unit drops are Bernoulli(p) across steps: 5 standard deviations
    assert ((drop - p).abs() < 5 * (p * (1 - p) / STEPS) ** 0.5).all(), drop
    assert ((m.mean(0) - 1).abs() < 0.25).all()
    assert ((m == 0).any(0) & (m != 0).any(0)).all()  # every unit is both dropped and kept
    if mode == "tbd":  # kept units come in whole tiles of 4
        assert (m.view(STEPS, N // 4, 4) != 0).float().std(dim=2).max() == 0


def test_per_batch_patterns_and_layouts():
    m = sample_mask("rbd", 0.5, N, 6, pattern=PatternOptions(per_batch=True))
    assert len(m.keep) == 1 and m.strides is not None
    wt = torch.randn(8, N).t()  # the transposed view of a row-major weight, as the layers pass it
    mask = ops.pack(sample_mask("rbd", 0.5, N, 20))
    rows = torch_backend._KeptRows.of(wt, mask)  # the torch backend reads strided views of one copy: no gather
    assert torch_backend.layout(mask) == "strided views"
    assert all(rows.rows(g)._base is not None for g in range(mask.num_sets))
    tbd = ops.pack(sample_mask("tbd", 0.5, N, 3, pattern=PatternOptions(tile_size=4)))
    assert torch_backend.layout(tbd) != "strided views"


def test_lstm_takes_the_pattern_options():
    lstm = StructDropLSTM(N, 16, dropout=0.5, input_dropout=0.5, mask_mode="tbd",
                          pattern=PatternOptions(dp_max=4, tile_size=8))
    lstm(torch.randn(5, 2, N))
    keep = (lstm.last_masks["input"][0] != 0).view(5, N // 8, 8)
    assert (keep.all(2) | ~keep.any(2)).all()


@pytest.mark.parametrize("call, message", [
    (lambda: pattern_distribution(0.9, 8), "dropout 0.9 cannot be reached with dp_max=8"),
    (lambda: pattern_distribution(0.5, 8, -1.0), "lambda must be >= 0, got -1.0"),
    (lambda: PatternOptions(dp_max=0), "dp_max must be an integer >= 1, got 0"),
    (lambda: sample_mask("tbd", 0.5, 30, 2, pattern=PatternOptions(tile_size=8)), "tile_size 8 does not divide the "
                                                                                   "width 30"),
    (lambda: StructDropLSTM(4, 4, pattern={"dp_max": 4}), "pattern must be a PatternOptions"),
])
def test_bad_parameters(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()

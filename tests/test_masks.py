"""Mask sampling: counts, structure, rates and scale of every mode."""
import math

import pytest
import torch

from onmt_structdrop.masks import (auto_pool_size, kept_count, mask_from_dense, sample_mask)

N, STEPS = 40, 30


def _dense(mode, p, seed=0, steps=STEPS, n=N, batch=6, **kw):
    g = torch.Generator().manual_seed(seed)
    m = sample_mask(mode, p, n, steps, batch=batch, generator=g, **kw)
    return m if mode == "bernoulli" else m.dense(torch.float64)


@pytest.mark.parametrize("mode", ["time", "pool", "batch"])
@pytest.mark.parametrize("p", [0.3, 0.5, 0.8])
def test_exactly_k_units_kept_per_step_with_scale_n_over_k(mode, p):
    m = _dense(mode, p)
    k = kept_count(p, N)
    assert m.shape == (STEPS, N)
    assert ((m != 0).sum(dim=1) == k).all()
    assert torch.allclose(m[m != 0], torch.full_like(m[m != 0], N / k))


def test_time_mask_is_fresh_each_step_and_batch_mask_is_not():
    time_mask, batch_mask = _dense("time", 0.5), _dense("batch", 0.5)
    assert len({tuple(row.tolist()) for row in time_mask}) > STEPS // 2
    assert (batch_mask == batch_mask[0]).all()


@pytest.mark.parametrize("p,size", [(0.5, 2), (0.3, 4), (0.7, 4), (0.8, 5), (0.1, 10)])
def test_automatic_pool_leaves_no_unit_always_kept_or_always_dropped(p, size):
    assert auto_pool_size(p) == size
    g = torch.Generator().manual_seed(1)
    m = sample_mask("pool", p, N, 2000, generator=g)
    assert len(m.keep) == size
    counts = torch.zeros(N)
    for keep in m.keep:
        counts[keep] += 1
    assert (counts > 0).all() and (counts < size).all()


def test_pool_mask_draws_each_step_from_a_balanced_pool():
    g = torch.Generator().manual_seed(0)
    m = sample_mask("pool", 0.5, N, STEPS, generator=g, pool_size=4)
    k = kept_count(0.5, N)
    assert len(m.keep) <= 4 and sorted(torch.cat(m.group_steps).tolist()) == list(range(STEPS))
    assert all(len(keep) == k and len(set(keep.tolist())) == k for keep in m.keep)
    # the pool's sets are windows of one permutation at evenly spaced starts: with k = n/2 and 4 sets, every
    # unit lies in exactly 2 of them
    full = sample_mask("pool", 0.5, N, 400, generator=g, pool_size=4)
    assert len(full.keep) == 4
    counts = torch.zeros(N)
    for keep in full.keep:
        counts[keep] += 1
    assert (counts == 2).all()


@pytest.mark.parametrize("mode,kw", [("time", {}), ("pool", {"pool_size": 4}), ("pool", {"pool_size": N}),
                                     ("batch", {}), ("bernoulli", {})])
@pytest.mark.parametrize("p", [0.3, 0.5, 0.7])
def test_every_unit_is_kept_at_rate_one_minus_p(mode, kw, p):
    draws = 400
    kept = torch.zeros(N, dtype=torch.float64)
    total = 0
    for seed in range(draws):
        m = _dense(mode, p, seed=seed, steps=3, **kw)
        m = m if m.dim() == 2 else m.flatten(0, 1)
        kept += (m != 0).sum(dim=0)
        total += m.shape[0]
    rate = kept / total
    expected = kept_count(p, N) / N if mode != "bernoulli" else 1 - p
    # samples within one draw are correlated; bound with the number of independent draws only
    sigma = math.sqrt(expected * (1 - expected) / draws)
    assert (rate - expected).abs().max() < 5 * sigma, (rate.min(), rate.max(), expected)
    assert (rate > 0).all() and (rate < 1).all()


@pytest.mark.parametrize("mode", ["time", "pool", "batch", "bernoulli"])
def test_mask_expectation_is_one(mode):
    ms = torch.stack([_dense(mode, 0.4, seed=s, steps=2, n=10) for s in range(3000)])
    mean = ms.mean()
    assert abs(mean.item() - 1.0) < 0.02


def test_bernoulli_masks_differ_across_the_batch():
    m = _dense("bernoulli", 0.5)
    assert m.shape == (STEPS, 6, N)
    assert not (m == m[:, :1]).all()


def test_zero_rate_means_no_mask_and_kept_count_has_a_floor():
    assert sample_mask("time", 0.0, N, STEPS) is None
    assert kept_count(0.99, 10) == 1


@pytest.mark.parametrize("counts", ["uneven", "equal"])  # "equal": dense() scatters all steps at once
def test_mask_from_dense_round_trips(counts):
    if counts == "uneven":
        m = torch.rand(STEPS, N, dtype=torch.float64) * (torch.rand(STEPS, N) > 0.6)
    else:
        kept = torch.rand(STEPS, N).argsort(1)[:, :4]
        m = torch.zeros(STEPS, N, dtype=torch.float64).scatter_(1, kept, torch.rand(STEPS, 4, dtype=torch.float64))
    torch.testing.assert_close(mask_from_dense(m).dense(torch.float64), m, rtol=0, atol=0)


def test_a_time_mask_made_dense_holds_the_scale_at_each_steps_kept_units():
    mask = sample_mask("time", 0.5, N, STEPS)
    expected = torch.zeros(STEPS, N)
    for t, keep in enumerate(mask.keep):
        expected[mask.group_steps[t], keep] = mask.scale
    torch.testing.assert_close(mask.dense(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("call,match", [
    (lambda: sample_mask("time", 1.0, N, STEPS), "dropout must be in \\[0, 1\\), got 1.0"),
    (lambda: sample_mask("rows", 0.5, N, STEPS), "mask_mode must be one of"),
    (lambda: sample_mask("pool", 0.5, N, STEPS, pool_size=0), "pool_size must be a positive integer or None, got 0"),
    (lambda: sample_mask("pool", 0.5, N, 3, pool_size=2, assignment=[0, 2, 1]), "3 set indices in \\[0, 2\\)"),
    (lambda: sample_mask("bernoulli", 0.5, N, STEPS), "bernoulli masks need the batch size"),
])
def test_bad_mask_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_a_tiny_rate_gets_a_bounded_pool():
    from onmt_structdrop.masks import MAX_AUTO_POOL, auto_pool_size
    assert auto_pool_size(5e-324) == auto_pool_size(1e-6) == MAX_AUTO_POOL and auto_pool_size(0.001) == 1000
    mask = sample_mask("pool", 1e-300, 10, 6)  # once a list of 1e300 window starts
    assert mask.steps == 6 and all(len(k) == 10 for k in mask.keep)

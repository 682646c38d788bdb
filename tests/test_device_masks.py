"""``time`` masks drawn where they are computed with (ops.draw_time): on a GPU by default, checked here on the CPU
by making the CPU draw as a GPU would. Each step keeps a uniform k-subset, every unit is dropped at rate p, a seed
gives the same masks, and the layer computed with them matches the float64 reference."""
import pytest
import test_ops
import torch

from onmt_structdrop import StructDropLSTM, ops
from onmt_structdrop.masks import kept_count


@pytest.fixture
def drawn_here(monkeypatch):
    """The CPU draws its own time masks, as a GPU does."""
    monkeypatch.setattr(ops, "draws_masks_on", lambda device: True)


@pytest.mark.parametrize("p, n", [(0.5, 9), (0.3, 650), (0.95, 7), (0.01, 5)])
def test_a_draw_is_a_sorted_k_subset_per_step_with_its_planning_data(p, n):
    mask = ops.draw_time(p, n, 6, "cpu", torch.Generator().manual_seed(1))
    k = kept_count(p, n)
    assert mask.keep.shape == (6, k) and mask.keep.dtype == torch.long
    assert all(row.unique().numel() == k and torch.equal(row, row.sort().values) for row in mask.keep)
    assert int(mask.keep.min()) >= 0 and int(mask.keep.max()) < n
    assert mask.scale == n / k and mask.values is None
    assert mask.step_sets == tuple(range(6)) and mask.sizes == (k,) * 6 and mask.set_steps[3] == (3,)
    assert torch.equal(mask.step_set, torch.arange(6))
    dense = mask.dense(torch.float64)
    assert ((dense != 0).sum(1) == k).all() and torch.allclose(dense[dense != 0], torch.tensor(n / k).double())


def test_every_unit_is_dropped_at_rate_p():
    steps, n, p = 4000, 10, 0.3
    mask = ops.draw_time(p, n, steps, "cpu", torch.Generator().manual_seed(2))
    kept = mask.dense() != 0
    rate = kept.double().mean(0)  # each unit's share of steps it is kept in: 0.7, sd 0.007 at 4000 steps
    assert (rate - 0.7).abs().max() < 0.035
    together = (kept[:, 0] & kept[:, 1]).double().mean()  # two units kept together: 7/10 * 6/9 for a k-subset
    assert abs(float(together) - 0.7 * 6 / 9) < 0.035
    assert (kept[1:] != kept[:-1]).any(1).double().mean() > 0.95  # a fresh set at (nearly) every step


def test_a_seed_gives_the_same_masks_and_another_seed_others(drawn_here):
    def masks(seed):
        torch.manual_seed(0)
        model = StructDropLSTM(4, 6, 2, dropout=0.5, recurrent_dropout=0.5, generator=torch.Generator().manual_seed(
            seed))
        return [model.sample_masks(5, 3, "cpu")["recurrent"][1][0].keep for _ in range(2)]
    first, again, other = masks(3), masks(3), masks(4)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[0], first[1])


@pytest.mark.parametrize("backend", ["torch", "native", "cupy"])
@pytest.mark.parametrize("packed", [False, True])
def test_the_layer_with_masks_drawn_on_its_device_matches_the_reference(backend, packed, drawn_here, monkeypatch):
    T, B, n_in, H = 6, 4, 5, 7
    torch.manual_seed(5)
    model = StructDropLSTM(n_in, H, 2, dropout=0.4, recurrent_dropout=0.3, input_dropout=0.2,
                           bidirectional=True).double()
    x, h0, c0 = torch.randn(T, B, n_in).double(), torch.zeros(4, B, H).double(), torch.zeros(4, B, H).double()
    lengths = [6, 2, 5, 1] if packed else None
    plan = ops.LayerPlan(ops.draw_time(0.4, n_in, T, "cpu"), None, None, False)
    test_ops.use(backend, monkeypatch, "lstm_layer", x, plan)
    actual = test_ops._run(model, x, h0, c0, lengths)
    drawn = model.last_masks
    assert drawn["recurrent"][1][1].shape == (T, H) and ((drawn["recurrent"][1][1] != 0).sum(1) == 5).all()
    expected = test_ops._reference(model, x, h0, c0, lengths, drawn)
    assert max(test_ops._max_errors(actual, expected)) < 1e-10


def test_where_masks_are_drawn(monkeypatch):
    monkeypatch.delenv(ops.HOST_MASKS_ENV, raising=False)
    assert ops.draws_masks_on("cuda:0") and not ops.draws_masks_on("cpu")
    monkeypatch.setenv(ops.HOST_MASKS_ENV, "1")
    assert not ops.draws_masks_on("cuda:0")
    monkeypatch.setenv(ops.HOST_MASKS_ENV, "sometimes")
    with pytest.raises(ValueError, match="ONMT_STRUCTDROP_HOST_MASKS='sometimes' is not a switch"):
        ops.check_environment()


def test_host_draws_are_unchanged_where_the_device_does_not_draw():
    model = StructDropLSTM(4, 6, 1, recurrent_dropout=0.5, generator=torch.Generator().manual_seed(1))
    mask = model.sample_masks(5, 3, "cpu")["recurrent"][0][0]
    assert type(mask).__name__ == "StructuredMask"


def test_a_block_draws_on_the_host_and_the_benchmark_times_both(monkeypatch):
    assert ops.draws_masks_on("cuda")
    with ops.masks_on_host():
        assert not ops.draws_masks_on("cuda")
    assert ops.draws_masks_on("cuda")
    from onmt_structdrop.tools import bench
    draws = ops.draws_masks_on
    monkeypatch.setattr(ops, "draws_masks_on", lambda device: draws("cuda"))  # this CPU draws as a GPU does
    report = bench.main(["--hidden", "8", "--batch", "2", "--seq", "3", "--repeats", "1", "--warmup", "0",
                         "--modes", "time", "--backends", "torch", "--output-size", "0"])
    names = [r["variant"] for r in report["results"]]
    assert "structured time [torch], host masks" in names and "structured time [torch]" in names


def test_the_output_layer_and_the_decoders_draw_on_their_device_too(drawn_here):
    from onmt_structdrop import StructuredDropoutLinear
    torch.manual_seed(3)
    layer = StructuredDropoutLinear(6, 5, dropout=0.5, generator=torch.Generator().manual_seed(2)).double()
    x = torch.randn(4, 3, 6, dtype=torch.float64)
    y = layer(x)
    mask = layer.last_mask
    assert mask.shape == (4, 6) and ((mask != 0).sum(1) == 3).all()
    torch.testing.assert_close(y, (x * mask[:, None, :]) @ layer.weight.t() + layer.bias, rtol=1e-12, atol=1e-12)
    pytest.importorskip("onmt")
    import argparse

    from onmt_structdrop.opennmt.options import DEFAULTS, Settings
    settings = Settings(argparse.Namespace(**{**DEFAULTS, "sd_mask_mode": "time"}, dropout=[0.3], rnn_type="LSTM"))
    drawn = settings.sample(0.3, 10, 7, 4, torch.Generator().manual_seed(1), "cpu")
    assert isinstance(drawn, ops.PackedMask) and drawn.sizes == (7,) * 7


def test_dense_masks_are_the_hosts_where_the_device_draws(drawn_here):
    """compact=False multiplies the masks in (the reference for speed): the device draws no packed mask for it."""
    model = StructDropLSTM(4, 6, 1, recurrent_dropout=0.5, compact=False)
    assert type(model.sample_masks(5, 3, "cpu")["recurrent"][0][0]).__name__ == "StructuredMask"
    assert isinstance(StructDropLSTM(4, 6, 1, recurrent_dropout=0.5).sample_masks(5, 3, "cpu")["recurrent"][0][0],
                      ops.PackedMask)

"""The benchmark runs end to end on a tiny configuration and reports what it promises."""
import json

import pytest
import torch
from torch import nn

from onmt_structdrop import ops
from onmt_structdrop.tools import bench, product_bench

CPU = torch.device("cpu")


def test_benchmark_writes_the_promised_json(tmp_path):
    out = tmp_path / "bench.json"
    report = bench.main(["--hidden", "16", "--batch", "3", "--seq", "4", "--repeats", "2", "--warmup", "1",
                         "--output-size", "30", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert set(saved) >= {"device", "config", "results", "speedup_vs_nn_lstm", "speedup_vs_dense", "ideal_ratio"}
    names = [r["variant"] for r in saved["results"]]
    assert names[0].startswith("nn.LSTM") and names[1].startswith("dense masks")
    rows = {f"structured {mode} [torch]" for mode in ("time", "pool", "batch")}
    if ops.availability("native")[0]:  # a fresh kept set for each of the 4 steps: the native engine serves it too
        rows.add("structured time [native]")
    assert rows <= set(names)  # a row per mode and backend that serves it
    assert saved["time_mode"] in rows and saved["time_mode_vs_nn_lstm"] == max(
        r["vs_nn_lstm"] for r in saved["results"]
        if r["variant"].startswith("structured time ") and not r["variant"].endswith(bench.NR_ONLY_SUFFIX))
    assert saved["fastest_structured"] in names
    assert saved["speedup_vs_nn_lstm"] == max(r["vs_nn_lstm"] for r in saved["results"] if r["variant"].startswith(
        "structured") and not r["variant"].endswith(bench.NR_ONLY_SUFFIX))
    assert saved["ideal_ratio"] == pytest.approx(2.0)
    assert report["results"][0]["vs_nn_lstm"] == pytest.approx(1.0)
    output = saved["output_layer"]
    assert [r["variant"] for r in output["results"]][:2] == ["nn.Dropout + nn.Linear", "dense masks (time)"]
    assert rows <= {r["variant"] for r in output["results"]}
    assert output["results"][0]["vs_linear"] == pytest.approx(1.0) and output["ideal_ratio"] == pytest.approx(2.0)


def test_sweep_writes_a_plot(tmp_path):
    png = tmp_path / "sweep.png"
    reports = bench.main(["--hidden", "8", "--batch", "2", "--seq", "3", "--repeats", "1", "--warmup", "0",
                          "--modes", "pool", "--output-size", "0", "--rates", "0.2", "0.6", "--plot", str(png)])
    assert [r["config"]["dropout"] for r in reports] == [0.2, 0.6]
    assert png.stat().st_size > 1000


def test_backends_are_timed_side_by_side(tmp_path):
    report = bench.main(["--hidden", "8", "--batch", "2", "--seq", "3", "--repeats", "1", "--warmup", "0",
                         "--modes", "time", "--output-size", "0", "--backends", "torch"])
    assert [r["variant"] for r in report["results"]][2:] == ["structured time [torch]",
                                                              "structured time [torch], NR only"]


def test_a_backend_gets_rows_only_for_the_modes_it_serves():
    shape = bench.argparse.Namespace(dropout=0.5, hidden=16, seq=35, batch=3, pool_size=None)
    assert bench.serves("torch", "lstm_layer", "batch", shape, CPU, torch.float32)
    if "native" in ops.serving(CPU):
        assert bench.serves("native", "lstm_layer", "time", shape, CPU, torch.float32)
        assert not bench.serves("native", "lstm_layer", "batch", shape, CPU, torch.float32)  # torch would serve


def test_ideal_ratio_counts_kept_units():
    args = bench.argparse.Namespace(hidden=10, input_size=10, layers=1, dropout=0.0, recurrent_dropout=0.5)
    assert bench.ideal_ratio(args) == pytest.approx(20 / 15)


@pytest.mark.parametrize("argv,match", [(["--dropout", "1.0"], "--dropout must be in \\[0, 1\\), got 1.0"),
                                        (["--rates", "0.5", "1.5"], "--rates must be in \\[0, 1\\), got 1.5")])
def test_bad_rates_are_named(argv, match):
    with pytest.raises(ValueError, match=match):
        bench.main(argv)


def test_profile_prints_each_variants_costliest_operations(capsys):
    bench.main(["--hidden", "8", "--batch", "2", "--seq", "3", "--repeats", "1", "--warmup", "0", "--modes", "time",
                "--output-size", "0", "--profile", "3"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("nn.LSTM", "dense masks", "structured"))]
    assert rows and out.count("profile of ") == len(rows)  # one profile per timed variant
    assert "profile of structured time [torch]" in out and "Self CPU time total" in out


def test_an_unavailable_backend_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(bench.ops, "availability", lambda name: (False, "no CUDA device"))
    with pytest.raises(SystemExit):
        bench.main(["--backends", "cupy"])
    assert "--backends cupy: that backend is not available here (no CUDA device)" in capsys.readouterr().err


def test_a_negative_profile_count_is_one_line(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--profile", "-1"])
    assert "--profile must be >= 0 (0: no profile), got -1" in capsys.readouterr().err


@pytest.mark.skipif(not ops.availability("native")[0], reason="native backend not built")
def test_product_bench_times_each_kept_product_against_the_dense_one_of_the_same_meaning(tmp_path):
    path = tmp_path / "products.json"
    rows = product_bench.main(["--rows", "3", "--inputs", "10", "--outputs", "20", "--rates", "0.3", "0.5",
                               "--repeats", "2", "--json", str(path)])
    assert json.loads(path.read_text())["results"] == rows
    assert [(r["product"], r["p"]) for r in rows] == [(name, p) for p in (0.3, 0.5) for name in product_bench.PRODUCTS]
    for row in rows:
        assert row["k"] == round(10 * (1 - row["p"])) and row["kept_ms"] > 0 and row["of_ideal"] > 0
        if row["product"] == "input gradient":  # writes its output: the dense product does too, no second one
            assert row["dense_fresh_ms"] == row["dense_ms"]


def test_product_bench_dense_products_compute_what_the_kept_ones_do():
    """The references add into their outputs as the kept forward and weight gradient do; the input gradient's
    writes its output, so it has no second, fresh form."""
    fns = product_bench.products(4, 6, 8, 0.5, torch.Generator().manual_seed(0), backend="torch")
    for name in ("forward", "weight gradient"):
        dense, _, fresh = fns[name]
        dense()
        torch.testing.assert_close(dense(), 2 * fresh())
    assert fns["input gradient"][2] is None


def _lstm_of(model):
    """The module a layer-benchmark variant runs (inside its backend wrapper)."""
    return model.model if isinstance(model, bench.Preferred) else model


def _sites(model):
    """A variant's non-recurrent dropout sites: (rate on the input, rate between layers) and the recurrent rate."""
    model = _lstm_of(model)
    if isinstance(model, bench.NNLSTMWithDropout):
        return model.drop.p, model.lstm.dropout, 0.0
    return model.input_dropout, model.dropout, model.recurrent_dropout


def test_every_variant_of_a_benchmark_is_timed_alike(monkeypatch):
    """Both sides of each comparison (the layer, the output layer) see the same input tensor, the same parameter
    shapes and the same dropout sites and rates, all in training mode; the structured side adds the recurrent
    dropout that nn.LSTM lacks, only where --recurrent-dropout asks for it, and then times one row without it."""
    seen = []
    real = bench.train_step
    monkeypatch.setattr(bench, "train_step", lambda model, x: seen.append((model, x)) or real(model, x))
    bench.main(["--hidden", "8", "--layers", "2", "--batch", "3", "--seq", "4", "--repeats", "1", "--warmup", "0",
                "--dropout", "0.4", "--recurrent-dropout", "0.2", "--output-size", "12"])
    by_input = {}
    for model, x in seen:
        assert model.training
        by_input.setdefault(id(x), {})[id(model)] = model
    layer, output = (list(group.values()) for group in by_input.values())  # one input tensor per benchmark
    for group in (layer, output):
        assert len(group) >= 3  # the nn.* alternative, dense masks and a structured row at least
        assert len({tuple(sorted(tuple(p.shape) for p in m.parameters())) for m in group}) == 1
    recurrent = []
    for model in layer:
        input_p, between_p, recurrent_p = _sites(model)
        assert (input_p, between_p) == (0.4, 0.4)
        if not isinstance(model, bench.NNLSTMWithDropout):
            recurrent.append(recurrent_p)
    assert recurrent.count(0.0) == 1 and set(recurrent) == {0.0, 0.2}  # one row at nn.LSTM's sites (NR only)
    for model in output:
        assert (model[0].p if isinstance(model, nn.Sequential) else _lstm_of(model).dropout) == 0.4

"""The benchmark runs end to end on a tiny configuration and reports what it promises."""
import json

import pytest
import torch

from onmt_structdrop.tools import bench

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
    assert rows <= set(names)  # a row per mode and backend that serves it
    assert saved["time_mode"] in rows and saved["time_mode_vs_nn_lstm"] == max(
        r["vs_nn_lstm"] for r in saved["results"] if r["variant"].startswith("structured time "))
    assert saved["fastest_structured"] in names
    assert saved["speedup_vs_nn_lstm"] == max(r["vs_nn_lstm"] for r in saved["results"]
                                              if r["variant"].startswith("structured"))
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
    assert [r["variant"] for r in report["results"]][2:] == ["structured time [torch]"]


def test_a_backend_gets_rows_only_for_the_modes_it_serves():
    shape = bench.argparse.Namespace(dropout=0.5, hidden=16, seq=35, batch=3, pool_size=None)
    assert bench.serves("torch", "lstm_layer", "batch", shape, CPU, torch.float32)
    if "native" in bench.backends(CPU):
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

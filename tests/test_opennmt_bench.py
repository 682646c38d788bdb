"""The OpenNMT training-step benchmark and the speed table of alternating training runs."""
import json

import pytest

pytest.importorskip("onmt")
from onmt_structdrop.tools import nmt_bench as bench, nmt_speed as speed  # noqa: E402


def test_benchmark_times_stock_and_plugin_steps(tmp_path):
    out = tmp_path / "nmt.json"
    report = bench.main(["--hidden", "8", "--word-vec-size", "6", "--src-vocab", "20", "--tgt-vocab", "15",
                         "--batch", "3", "--src-len", "4", "--tgt-len", "5", "--repeats", "2", "--warmup", "1",
                         "--modes", "time", "pool", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert [r["variant"] for r in saved["results"]] == [
        "stock (brnn + rnn, nn.Dropout)", "sd_brnn + sd_ifrnn, time", "sd_brnn + sd_ifrnn, pool"]
    assert saved["results"][0]["vs_stock"] == pytest.approx(1.0)
    stock = saved["results"][0]["ms"]
    assert saved["ideal_ms"] == pytest.approx(stock - 0.3 * saved["shrinkable_ms"])
    assert saved["ideal_ratio"] == pytest.approx(stock / saved["ideal_ms"]) and report["ideal_ratio"] > 1.0


def test_shrinkable_products_are_those_the_dropout_reaches():
    args = bench.argparse.Namespace(batch=2, src_len=3, tgt_len=5, word_vec_size=4, hidden=6, tgt_vocab=11, layers=2)
    flops = sum(m * n * o * reps for m, n, o, reps in bench.shrinkable_shapes(args))
    encoder = 2 * (3 * 2) * (4 + 6) * (4 * 3)  # both directions, 4 gates of 3 units, inputs of 4 then 6 units
    decoder = 5 * 2 * ((4 + 6) + 6) * (4 * 6)  # per step: embedding and input feed, then the layer below
    attention = 5 * 2 * (2 * 6) * 6  # [context; h] -> output
    generator = (5 * 2) * 6 * 11
    assert flops == encoder + decoder + attention + generator


def test_bad_options_are_named():
    with pytest.raises(SystemExit):
        bench.main(["--dropout", "1.0"])
    with pytest.raises(SystemExit):
        bench.main(["--hidden", "7"])
    with pytest.raises(SystemExit):
        bench.main(["--rates", "0.2", "1.5"])
    with pytest.raises(SystemExit):
        bench.main(["--plot", "x.png"])


def write_log(path, tok_s):
    lines = [f"[x INFO] Step {25 * (i + 1)}/  100; acc: 1.0; ppl: 9.0; xent: 2.0; lr: 0.00100; sents: 64; "
             f"bsz: 900/ 950/64; {t - 50}/{t} tok/s;     {i} sec;" for i, t in enumerate(tok_s)]
    path.write_text("\n".join(lines) + "\n")


def test_speed_table_pairs_each_round_with_its_baseline(tmp_path, capsys):
    write_log(tmp_path / "m_r1.log", [5000, 1200, 1100, 1300])
    write_log(tmp_path / "m_baseline_r1.log", [5000, 1000, 1000, 1000])
    write_log(tmp_path / "m_r2.log", [5000, 900, 900, 900])
    write_log(tmp_path / "m_baseline_r2.log", [5000, 1000, 1000, 1000])
    speed.main([str(tmp_path / name) for name in ("m_r1.log", "m_baseline_r1.log", "m_r2.log", "m_baseline_r2.log")])
    table = capsys.readouterr().out
    assert "| m | 1 | 1200 | 1.20x |" in table and "| m | 2 | 900 | 0.90x |" in table
    assert "| m | median of 2 | | 1.05x |" in table
    with pytest.raises(SystemExit, match="RECIPE_rN"):
        speed.main([str(tmp_path / "m_r1.log"), str(tmp_path / "m_baseline_r1.log"), str(tmp_path / "other.log")])


def test_rate_sweep_writes_a_plot(tmp_path):
    png = tmp_path / "sweep.png"
    result = bench.main(["--hidden", "8", "--word-vec-size", "6", "--src-vocab", "20", "--tgt-vocab", "15",
                         "--batch", "2", "--src-len", "3", "--tgt-len", "3", "--repeats", "1", "--warmup", "0",
                         "--modes", "batch", "--rates", "0.2", "0.5", "--plot", str(png)])
    assert [r["config"]["dropout"] for r in result["sweep"]] == [0.2, 0.5]
    assert png.stat().st_size > 1000

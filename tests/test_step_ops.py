"""step_ops counts the operations of one training step, stock beside the plugin."""
import json

import pytest
import torch

from onmt_structdrop.tools import step_ops

pytest.importorskip("onmt")
TINY = ["--hidden", "8", "--word-vec-size", "8", "--batch", "3", "--src-len", "4", "--tgt-len", "4", "--src-vocab",
        "30", "--tgt-vocab", "20", "--warmup", "1"]


def test_a_known_step_counts_its_operators():
    a, b = torch.randn(3, 4), torch.randn(4, 2)
    counts = step_ops.count(lambda: torch.mm(a, b).add(1).relu().t(), torch.device("cpu"), warmup=0)
    # mm (its resolve_conj leaves launch nothing), add's copy of the scalar 1, clamp_min under relu; t is a view
    assert counts["compute"] == 3 and counts["aten_leaf"] > counts["compute"] and counts["aten"] > counts["aten_leaf"]


def test_the_counts_of_each_model_and_their_ratios(tmp_path, capsys):
    report = step_ops.main(TINY + ["--modes", "time", "--json", str(tmp_path / "ops.json")])
    stock, plugin = report["results"]
    assert stock["variant"].startswith("stock") and plugin["variant"] == "sd_brnn + sd_ifrnn, time"
    assert stock["compute"] > 100 and plugin["vs_stock"]["compute"] == pytest.approx(
        plugin["compute"] / stock["compute"])
    assert json.loads((tmp_path / "ops.json").read_text())["results"] == report["results"]
    again = step_ops.main(TINY + ["--modes", "time"])
    assert [r["compute"] for r in again["results"]] == [stock["compute"], plugin["compute"]]  # not timing
    assert "compute ops" in capsys.readouterr().out

"""The demo trains, evaluates, logs and plots on its embedded corpus and on a PTB-format directory."""
import json

import pytest

from onmt_structdrop.tools import lm_demo as demo

TINY = ["--steps", "3", "--eval-every", "2", "--hidden", "16", "--batch", "4", "--bptt", "5"]


def test_demo_on_the_embedded_corpus(tmp_path):
    results = demo.main(TINY + ["--out", str(tmp_path)])
    assert [r["variant"] for r in results] == ["nn.LSTM + dropout", "structured batch", "structured pool",
                                               "structured time"]
    assert all(r["valid_ppl"] > 1 and r["tokens_per_s"] > 0 for r in results)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert len(saved["results"]) == 4
    assert "valid ppl" in (tmp_path / "log.txt").read_text()
    assert (tmp_path / "perplexity.png").stat().st_size > 1000


def test_demo_reads_a_ptb_directory(tmp_path):
    data = tmp_path / "ptb"
    data.mkdir()
    text = " the cat sat on the mat \n the dog sat on the log \n" * 20
    for split in ("train", "valid"):
        (data / f"ptb.{split}.txt").write_text(text)
    results = demo.main(TINY + ["--data", str(data), "--out", str(tmp_path / "out"), "--modes", "batch"])
    assert len(results) == 2


def test_demo_names_a_missing_corpus_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="ptb.train.txt"):
        demo.main(TINY + ["--data", str(tmp_path), "--out", str(tmp_path / "out")])


def test_demo_names_a_corpus_too_short_for_the_batch(tmp_path):
    data = tmp_path / "ptb"
    data.mkdir()
    (data / "ptb.train.txt").write_text(" a b c \n")
    (data / "ptb.valid.txt").write_text(" a b c \n" * 20)
    with pytest.raises(ValueError, match="ptb.train.txt has 4 tokens: too few for batch 4 x bptt 5 \\(needs 24\\)"):
        demo.main(TINY + ["--data", str(data), "--out", str(tmp_path / "out")])


@pytest.mark.parametrize("argv,match", [(["--dropout", "1.0"], "--dropout must be in \\[0, 1\\), got 1.0"),
                                        (["--recurrent-dropout", "-0.1"], "--recurrent-dropout must be in")])
def test_demo_names_a_bad_rate(tmp_path, argv, match):
    with pytest.raises(ValueError, match=match):
        demo.main(TINY + argv + ["--out", str(tmp_path)])


def test_demo_names_a_bad_size(tmp_path, capsys):
    with pytest.raises(SystemExit):
        demo.main(TINY + ["--eval-every", "0", "--out", str(tmp_path)])
    assert "--eval-every must be >= 1, got 0" in capsys.readouterr().err

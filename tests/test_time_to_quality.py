"""time_to_quality: the idle training time to the ordinary model's best validation metric, from run folders and
measured speeds, for task runs (history.json) and onmt_train runs (train.log)."""
import json

import pytest

from onmt_structdrop.tools import time_to_quality as ttq


def task_run(folder, impl, seed, values, words_per_epoch=3600.0, metric="valid_ppl", tests=None):
    """A task run's folder; ``tests``: the test metric of each epoch (NER) or of the last (LM)."""
    folder.mkdir(parents=True)
    epochs = [{"epoch": i + 1, metric: v, "words_per_s": 100.0, "train_seconds": words_per_epoch / 100.0}
              for i, v in enumerate(values)]
    test = "test_ppl" if metric == "valid_ppl" else "test_f1"
    if metric == "valid_ppl" and tests is not None:
        epochs[-1][test] = tests
    elif tests is not None:
        for epoch, value in zip(epochs, tests):
            epoch[test] = value
    (folder / "history.json").write_text(json.dumps({"config": {"dropout_impl": impl, "seed": str(seed)},
                                                     "epochs": epochs}))
    return folder


def speed_json(path, structured_wps, ordinary_wps):
    path.write_text(json.dumps({"results": [{"recipe": "x/ptb_small.yaml", "words_per_s": structured_wps},
                                            {"recipe": "x/ptb_small_baseline.yaml", "words_per_s": ordinary_wps}]}))
    return path


def test_the_time_to_the_ordinary_best_from_task_runs(tmp_path, capsys):
    runs = [task_run(tmp_path / "s_s1", "structured", 1, [200, 150, 120, 110, 105], tests=101.0),
            task_run(tmp_path / "o_s1", "standard", 1, [200, 160, 130, 115, 112], tests=108.0),
            task_run(tmp_path / "s_s2", "structured", 2, [190, 140, 125, 118, 116], tests=111.0),
            task_run(tmp_path / "o_s2", "standard", 2, [210, 150, 122, 117, 114], tests=110.0)]
    speed = speed_json(tmp_path / "speed.json", 1.2, 1.0)  # words/s: the structured model 1.2x faster a word
    rows = ttq.main([str(r) for r in runs] + ["--speed", str(speed), "--json", str(tmp_path / "t.json"),
                                                 "--plot", str(tmp_path / "t.png")])
    # seed 1: the ordinary best (112) at its epoch 5, 5 x 3600 words at 1.0 word/s; the structured model passes
    # it at epoch 4 (110), 4 x 3600 words at 1.2 words/s: a ratio of 5 / (4 / 1.2) = 1.5
    one = rows[0]
    assert one["ordinary_hours"] == pytest.approx(5 * 3600 / 1.0 / 3600)
    assert one["structured_hours_to_ordinary_best"] == pytest.approx(4 * 3600 / 1.2 / 3600)
    assert one["structured_hours_to_own_best"] == pytest.approx(5 * 3600 / 1.2 / 3600)
    assert one["ratio"] == pytest.approx(1.5)
    # seed 2: the structured model never reaches 114: no ratio, said so
    assert rows[1]["structured_hours_to_ordinary_best"] is None and rows[1]["ratio"] is None
    # the mean curves: structured 195 145 122.5 114 110.5, ordinary 205 155 126 116 113: both at epoch 5
    assert rows[2]["seed"] == "mean" and rows[2]["ratio"] == pytest.approx(1.2)
    out = capsys.readouterr().out
    assert "not reached" in out and "| mean |" in out
    saved = json.loads((tmp_path / "t.json").read_text())
    assert saved["comparisons"] == rows and saved["step_speedup"] == pytest.approx(1.2)
    # the LM's reported figures are its last epoch's: valid 105 and 116, test 101 and 111 for the structured model
    assert saved["fidelity"]["structured"]["valid"] == {"mean": 110.5, "min": 105, "max": 116, "n": 2}
    assert saved["fidelity"]["structured"]["test"]["mean"] == pytest.approx(106.0)
    assert saved["fidelity"]["ordinary"]["test"] == {"mean": 109.0, "min": 108.0, "max": 110.0, "n": 2}
    assert "| structured - ordinary | | -2.50 (-2.2%) | -3.00 (-2.8%) |" in out
    assert "step speed-up 1.20x; time to the ordinary model's best 1.20x" in out
    assert (tmp_path / "t.png").stat().st_size > 1000


def test_dev_f1_is_maximised(tmp_path, capsys):
    runs = [task_run(tmp_path / "s", "structured", 1, [80, 88, 90.5, 90.2], metric="dev_f1", tests=[75, 83, 85, 86]),
            task_run(tmp_path / "o", "standard", 1, [81, 89, 90.0, 90.4], metric="dev_f1", tests=[76, 84, 86, 84])]
    rows = ttq.main([str(r) for r in runs] + ["--speed", str(speed_json(tmp_path / "speed.json", 1.0, 1.0))])
    assert rows[0]["ordinary_best"] == 90.4 and rows[0]["ratio"] == pytest.approx(4 / 3)
    # the tagger's test F1 is the best dev epoch's, not the last's
    assert capsys.readouterr().out.count("| structured | 1 | 90.50 | 85.00 |") == 1
    # within 0.5 F1 of the ordinary best (89.9): the ordinary model at epoch 3 and the structured one too
    rows = ttq.main([str(r) for r in runs] + ["--speed", str(tmp_path / "speed.json"), "--tolerance", "0.5"])
    assert rows[0]["target"] == pytest.approx(89.9) and rows[0]["ratio"] == pytest.approx(1.0)


def onmt_log(path, structured, points):
    """A train.log as onmt_train writes it: report lines (2 seconds a step: 1000 target tokens at 500 tok/s) and
    validation perplexities."""
    lines = []
    for step, ppl in points:
        lines.append(f"[2026-12-08 00:00:00,000 INFO] Step {step}/ 6000; acc: 50.0; ppl: 9.0; xent: 2.2; lr: 0.001; "
                     f"sents: 3200; bsz: 900/1000/64; 400/500 tok/s; {2 * step} sec;")
        if structured:
            lines.append("[2026-12-08 00:00:00,000 INFO] Structured dropout: 11.9% of LSTM and generator "
                         "multiply-adds skipped")
        if ppl is not None:
            lines.append(f"[2026-12-08 00:00:00,000 INFO] Validation perplexity: {ppl}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_onmt_runs_are_placed_by_their_measured_seconds_a_step(tmp_path):
    s = onmt_log(tmp_path / "m_s42" / "train.log", True, [(250, None), (500, 12.0), (1000, 9.0), (1500, 8.0)])
    o = onmt_log(tmp_path / "m_baseline_s42" / "train.log", False, [(500, 13.0), (1000, 9.5), (1500, 8.5)])
    logs = [onmt_log(tmp_path / "speed" / f"{name}_r1.log", structured, [(25 * i, None) for i in range(1, 5)])
            for name, structured in (("m", True), ("m_baseline", False))]
    rows = ttq.main([str(s.parent), str(o.parent), "--speed", *map(str, logs)])
    assert rows[0]["seed"] == "42" and rows[0]["ordinary_best"] == 8.5
    # both 2 seconds a step (1000 tokens at 500 tok/s): the structured model passes 8.5 at step 1500 (8.0)...
    assert rows[0]["structured_hours_to_ordinary_best"] == pytest.approx(1500 * 2 / 3600)
    assert rows[0]["ratio"] == pytest.approx(1.0)


@pytest.mark.parametrize("runs, message", [
    (["only_structured"], "seeds 1 lack a structured or an ordinary run"),
    (["missing"], "neither history.json nor train.log"),
])
def test_bad_runs_are_one_line(tmp_path, capsys, runs, message):
    task_run(tmp_path / "only_structured", "structured", 1, [100, 90])
    with pytest.raises(SystemExit) as exit_info:
        ttq.main([str(tmp_path / r) for r in runs] + ["--speed", str(speed_json(tmp_path / "s.json", 1, 1))])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and message in err

"""The round-robin task speed comparison: it times the runs' own training steps, and its command tables both
recipes, keeps its figures and names bad data in one line."""
import json

import pytest
import torch

from onmt_structdrop.tasks import lm, ner, speed, training

from task_data import write_conll, write_ptb

LM_TINY = ["-hidden_size", "12", "-batch_size", "4", "-bptt", "5", "-eval_batch_size", "2", "-threads", "1"]
NER_TINY = ["-word_dim", "8", "-char_dim", "4", "-char_filters", "5", "-hidden_size", "12", "-batch_size", "8",
            "-threads", "1", "-lr", "0.02"]


def lm_options(tmp_path):
    return ["-data", str(write_ptb(tmp_path / "ptb")), *LM_TINY]


def ner_options(tmp_path):
    files = write_conll(tmp_path / "conll")
    return ["-train", str(files["eng.train"]), "-dev", str(files["eng.testa"]), "-test", str(files["eng.testb"]),
            *NER_TINY]


@pytest.mark.parametrize("task, recipe, options", [(lm, "recipes/ptb_small.yaml", lm_options),
                                                   (ner, "recipes/conll2003.yaml", ner_options)])
def test_the_timed_steps_are_the_runs_own_steps(tmp_path, task, recipe, options):
    argv = ["-config", recipe, *options(tmp_path)]
    task.main([*argv, "-save_dir", str(tmp_path / "run"), "-epochs", "1", "-max_steps_per_epoch", "3"])
    trained = training.load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    model, steps = task.training_steps(task.parse(argv))
    for _ in range(3):
        next(steps)[1]()
    state = model.state_dict()
    assert state.keys() == trained.keys()
    for name, value in trained.items():
        assert torch.equal(state[name], value), name


def test_the_command_tables_both_recipes_and_keeps_its_figures(tmp_path, capsys, monkeypatch):
    out = tmp_path / "speed"
    timed = []
    real = speed.time_pairs
    monkeypatch.setattr(speed, "time_pairs", lambda *args: timed.append(real(*args)) or timed[-1])
    rows = speed.main(["lm", "recipes/ptb_small.yaml", "recipes/ptb_small_baseline.yaml", *lm_options(tmp_path),
                       "--steps", "3", "--warmup", "1", "--json", str(out / "ptb.json"), "--plot",
                       str(out / "ptb.png")])
    printed = capsys.readouterr().out
    assert [r["recipe"] for r in rows] == ["recipes/ptb_small.yaml", "recipes/ptb_small_baseline.yaml"]
    assert rows[1]["speed"] == 1.0 and rows[0]["speed"] > 0 and "1 thread" in printed
    (seconds, words), = timed
    assert words[0] == words[1] == 3 * 4 * 5  # both recipes stepped over the same 3 windows of 4 x 5 words
    saved = json.loads((out / "ptb.json").read_text())
    assert saved["results"] == rows and [len(s) for s in saved["step_seconds"]] == [3, 3]
    assert saved["command"].startswith("python -m onmt_structdrop.tasks.speed lm recipes/ptb_small.yaml")
    assert (out / "ptb.png").stat().st_size > 0
    # the ideal: the baseline's steps less p times the full-width products the structured dropout shrinks
    baseline, products, best = saved["step_seconds"][1], saved["product_seconds"]["0.3"], saved["ideal"]
    assert list(best["shrinkable_ms"]) == ["0.3"] and len(products) == 3
    assert best["speed"] == pytest.approx(sum(baseline) / (sum(baseline) - 0.3 * sum(products)))
    assert best["words_per_s"] == pytest.approx(rows[1]["words_per_s"] * best["speed"])
    median = lambda s: sorted(s)[1]  # noqa: E731
    assert best["ms_per_step"] == pytest.approx(1e3 * (median(baseline) - 0.3 * median(products)))
    assert "ideal (baseline - p x shrinkable)" in printed


def test_the_ideal_counts_the_products_the_dropout_reaches(tmp_path):
    args = lm.parse(["-config", "recipes/ptb_small.yaml", *lm_options(tmp_path), "-recurrent_dropout", "0.2"])
    model, _ = lm.training_steps(args)
    T, B, H, V = 5, 4, 12, model.embed.num_embeddings
    shapes = lm.shrinkable_shapes(args, model)
    flops = {rate: sum(m * n * o * reps for m, n, o, reps in s) for rate, s in shapes.items()}
    inputs, projection, recurrent = 2 * (T * B) * H * 4 * H, (T * B) * H * V, 2 * T * B * H * 4 * H
    assert flops == {0.3: inputs + projection, 0.2: recurrent}


def test_no_ideal_for_a_recipe_without_structured_dropout(tmp_path, capsys):
    speed.main(["lm", "recipes/ptb_small_baseline.yaml", "recipes/ptb_small_baseline.yaml", *lm_options(tmp_path),
                "--steps", "2", "--warmup", "0", "--json", str(tmp_path / "same.json")])
    assert json.loads((tmp_path / "same.json").read_text())["ideal"] is None
    assert "ideal" not in capsys.readouterr().out


def test_missing_data_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        speed.main(["ner", "recipes/conll2003.yaml", "recipes/conll2003_baseline.yaml", "-train",
                    str(tmp_path / "absent.train"), *NER_TINY, "--steps", "2"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "absent.train" in err


def test_too_few_steps_are_refused(capsys):
    with pytest.raises(SystemExit):
        speed.main(["lm", "recipes/ptb_small.yaml", "recipes/ptb_small_baseline.yaml", "--steps", "1"])
    assert "--steps must be >= 2" in capsys.readouterr().err

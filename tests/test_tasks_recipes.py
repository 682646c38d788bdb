"""Task recipes and their loader, the data preparation command and the run report."""
import argparse
import json
from pathlib import Path

import pytest

from onmt_structdrop.tasks import lm, ner, prepare, report
from onmt_structdrop.tasks.config import DROPOUT_OPTIONS, build_parser, compacts_output, parse_options, read_recipe

from task_data import write_conll, write_ptb

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
TASK_RECIPES = {"ptb_small": lm, "ptb_medium": lm, "ptb_large": lm, "conll2003": ner}


@pytest.mark.parametrize("name", sorted(TASK_RECIPES))
def test_each_recipe_and_its_baseline_differ_only_in_dropout_and_save_dir(name):
    options = TASK_RECIPES[name].OPTIONS
    structured = read_recipe(RECIPES / f"{name}.yaml", options)
    baseline = read_recipe(RECIPES / f"{name}_baseline.yaml", options)
    assert structured["dropout_impl"] == "structured" and baseline["dropout_impl"] == "standard"
    assert {k for k in structured if structured[k] != baseline[k]} == {"dropout_impl", "save_dir"}


@pytest.mark.parametrize("name, expected", [
    ("ptb_medium", {"hidden_size": 650, "num_layers": 2, "dropout": 0.5, "bptt": 35, "batch_size": 20,
                    "epochs": 39, "lr": 1.0, "lr_decay": 0.8, "decay_after": 6, "max_grad_norm": 5.0}),
    ("ptb_large", {"hidden_size": 1500, "dropout": 0.65, "bptt": 35, "epochs": 55, "decay_after": 14,
                   "max_grad_norm": 10.0}),
])
def test_ptb_recipes_are_zarembas_setups(name, expected):
    recipe = read_recipe(RECIPES / f"{name}.yaml", lm.OPTIONS)
    assert {k: recipe[k] for k in expected} == expected
    if name == "ptb_large":
        assert recipe["lr_decay"] == pytest.approx(1 / 1.15)


def test_command_line_overrides_the_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("hidden_size: 30\ndropout: 0.2\nresume: true\n")
    parser = build_parser("t", "", lm.OPTIONS)
    args = parse_options(parser, lm.OPTIONS, ["-config", str(recipe), "-dropout", "0.4"])
    assert (args.hidden_size, args.dropout, args.resume, args.bptt) == (30, 0.4, True, 20)


@pytest.mark.parametrize("text, message", [
    ("hiden_size: 30\n", "unknown key 'hiden_size' (did you mean 'hidden_size'?)"),
    ("colour: red\n", "unknown key 'colour'; known keys: batch_size"),
    ("hidden_size: 0.5\n", "hidden_size: expected int, got 0.5"),
    ("dropout: yes\n", "dropout: expected float, got True"),
    ("mask_mode: dense\n", "mask_mode must be one of time, pool"),
    ("- 1\n- 2\n", "a recipe is a mapping"),
    ("a: [\n", "not valid YAML"),
])
def test_bad_recipes_are_refused_with_the_file_and_key(tmp_path, capsys, text, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    with pytest.raises(SystemExit):
        parse_options(build_parser("t", "", lm.OPTIONS), lm.OPTIONS, ["-config", str(recipe)])
    err = capsys.readouterr().err
    assert str(recipe) in err and message in err


def test_a_missing_recipe_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        ner.main(["-config", str(tmp_path / "nope.yaml")])
    assert "recipe not found" in capsys.readouterr().err


def test_prepare_copies_checks_and_records(tmp_path, capsys):
    source = write_conll(tmp_path / "src")["eng.train"].parent
    record = prepare.main(["conll2003", "--source", str(source), "--out", str(tmp_path / "out")])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["eng.testa", "eng.testb", "eng.train",
                                                                    "prepare.json"]
    assert (tmp_path / "out" / "eng.train").read_bytes() == (source / "eng.train").read_bytes()
    assert record["files"]["eng.train"]["matches_known_copy"] is False  # generated, not the real file
    assert "DIFFERS from the known copy" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "prepare.json").read_text())["task"] == "conll2003"


def test_prepare_downloads_from_a_url(tmp_path):
    source = write_ptb(tmp_path / "src")
    prepare.main(["ptb", "--download", "--url", source.resolve().as_uri(), "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "ptb.valid.txt").read_text() == (source / "ptb.valid.txt").read_text()


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "eng.testa").unlink(), "eng.testa not found"),
    (lambda d: (d / "eng.testb").write_text("EU NNP I-NP I-ORG\nx\n"), "eng.testb:2: expected 4 columns"),
    (lambda d: (d / "eng.testb").write_bytes(b"EU NNP I-NP I-ORG\nCaf\xe9 NNP I-NP I-ORG\n"),
     "eng.testb:2: not UTF-8 (byte 0xe9 at column 4)"),
])
def test_prepare_refuses_missing_or_malformed_files(tmp_path, capsys, damage, message):
    source = write_conll(tmp_path / "src")["eng.train"].parent
    damage(source)
    with pytest.raises(SystemExit):
        prepare.main(["conll2003", "--source", str(source), "--out", str(tmp_path / "out")])
    assert message in capsys.readouterr().err


def test_report_tables_and_plots_runs(tmp_path, capsys):
    data = write_ptb(tmp_path / "ptb")
    tiny = ["-data", str(data), "-hidden_size", "8", "-batch_size", "4", "-bptt", "5", "-eval_batch_size", "2",
            "-epochs", "2", "-dropout", "0.3"]
    for impl in ("structured", "standard"):
        lm.main(tiny + ["-dropout_impl", impl, "-save_dir", str(tmp_path / impl)])
    capsys.readouterr()
    rows = report.main([str(tmp_path / "structured"), str(tmp_path / "standard"), "--plot", str(tmp_path / "c.png")])
    out = capsys.readouterr().out
    assert "| structured | structured (time) | 1 | 2 |" in out and "| standard | standard | 1 | 2 |" in out
    assert "1.00x" in out and (tmp_path / "c.png").stat().st_size > 1000
    assert rows[0]["valid_ppl"] == json.loads((tmp_path / "structured" / "history.json").read_text())[
        "epochs"][-1]["valid_ppl"]
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "nothing")])
    assert "no history.json" in capsys.readouterr().err


def test_the_commands_are_installed():
    from importlib.metadata import entry_points
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts["onmt-structdrop-lm"] == "onmt_structdrop.tasks.lm:cli"
    assert scripts["onmt-structdrop-ner"] == "onmt_structdrop.tasks.ner:cli"
    assert scripts["onmt-structdrop-bench"] == "onmt_structdrop.tools.bench:cli"


def test_the_console_commands_exit_with_status_zero(tmp_path):
    # console entry points call sys.exit(cli()): anything but None would be printed and exit with status 1
    data = write_ptb(tmp_path / "ptb")
    assert lm.cli(["-data", str(data), "-save_dir", str(tmp_path / "lm"), "-hidden_size", "8", "-batch_size", "4",
                    "-bptt", "5", "-eval_batch_size", "2", "-epochs", "1"]) is None
    files = write_conll(tmp_path / "conll")
    assert ner.cli(["-train", str(files["eng.train"]), "-dev", str(files["eng.testa"]), "-test",
                     str(files["eng.testb"]), "-save_dir", str(tmp_path / "ner"), "-hidden_size", "4",
                     "-epochs", "1"]) is None


@pytest.mark.parametrize("setting, expected", [("auto", True), ("false", False)])
def test_compact_output_gives_the_seam_packed_masks_or_dense_ones(setting, expected):
    """``auto`` hands the output layer packed masks, which the seam compacts where it pays (test_ops.py:
    test_the_seam_compacts_where_the_serving_backend_finds_that_it_pays); ``false`` multiplies the masks in."""
    assert compacts_output(argparse.Namespace(compact_output=setting)) is expected


def test_compact_output_true_is_refused_with_its_choices(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_options(build_parser("x", "x", DROPOUT_OPTIONS), DROPOUT_OPTIONS, ["-compact_output", "true"])
    assert "invalid choice: 'true' (choose from 'auto', 'false')" in capsys.readouterr().err

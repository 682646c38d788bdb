"""Every recipe parses with OpenNMT-py's own option parser, and each differs from its baseline twin only in the
model type, the structured-dropout options and the output paths."""
from pathlib import Path

import pytest
import yaml

pytest.importorskip("onmt")
from onmt import opts  # noqa: E402
from onmt.utils.parse import ArgumentParser  # noqa: E402

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
PAIRS = ["multi30k_deen", "iwslt_deen", "iwslt_envi"]


def parse(path):
    parser = ArgumentParser()
    opts.train_opts(parser)
    return parser.parse_args(["-config", str(path)])


@pytest.mark.parametrize("name", PAIRS)
def test_recipe_and_baseline_differ_only_where_they_should(name):
    sd, base = (yaml.safe_load((RECIPES / f"{n}.yaml").read_text()) for n in (name, f"{name}_baseline"))
    differ = {k for k in set(sd) | set(base) if sd.get(k) != base.get(k)}
    assert differ <= {"encoder_type", "decoder_type", "sd_recurrent_dropout", "sd_mask_mode", "sd_seed",
                      "save_data", "save_model", "log_file"}
    assert (sd["encoder_type"], sd["decoder_type"]) == ("sd_brnn", "sd_ifrnn")
    assert (base["encoder_type"], base["decoder_type"], base["input_feed"]) == ("brnn", "rnn", 1)
    opt = parse(RECIPES / f"{name}.yaml")
    assert opt.sd_mask_mode == sd["sd_mask_mode"] and opt.sd_recurrent_dropout == sd["sd_recurrent_dropout"]
    parse(RECIPES / f"{name}_baseline.yaml")


@pytest.mark.parametrize("name", PAIRS)
def test_the_shipped_baseline_is_the_recipes_stock_twin(name):
    from onmt_structdrop.tools.nmt_compare import OUTPUT_PATHS, stock_twin
    sd, base = (yaml.safe_load((RECIPES / f"{n}.yaml").read_text()) for n in (name, f"{name}_baseline"))
    twin = stock_twin(sd)
    assert {k: v for k, v in twin.items() if k not in OUTPUT_PATHS} == {
        k: v for k, v in base.items() if k not in OUTPUT_PATHS}
    assert twin["save_model"] == str(Path(sd["save_model"]).parent / "stock" / "model")


def test_a_config_without_structured_types_has_no_twin():
    from onmt_structdrop.tools.nmt_compare import stock_twin
    with pytest.raises(ValueError, match="neither encoder_type \\(brnn\\) nor decoder_type \\(rnn\\)"):
        stock_twin({"encoder_type": "brnn", "decoder_type": "rnn"})
    twin = stock_twin({"encoder_type": "sd_rnn", "decoder_type": "sd_rnn", "sd_seed": 3, "dropout": [0.3]})
    assert twin == {"encoder_type": "rnn", "decoder_type": "rnn", "input_feed": 0, "dropout": [0.3]}


@pytest.mark.parametrize("text, message", [
    ("", "is not an onmt_train config (a YAML mapping of options)"),
    ("encoder_type: brnn\nsave_model: x/m\n", "neither encoder_type (brnn) nor decoder_type (None) is a "
                                               "structured-dropout one"),
    ("encoder_type: sd_brnn\n", "has no save_model"),
])
def test_compare_refuses_a_config_it_cannot_twin_in_one_line(text, message, tmp_path, capsys):
    from onmt_structdrop.tools import nmt_compare
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        nmt_compare.main([str(tmp_path / "c.yaml")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and message in err

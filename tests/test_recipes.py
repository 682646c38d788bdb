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

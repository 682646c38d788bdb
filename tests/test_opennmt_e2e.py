"""End to end with the stock OpenNMT-py commands on a tiny real sample (Multi30k): prepare (a joint SentencePiece
model), onmt_build_vocab, onmt_train (structured and stock) and onmt_translate through OpenNMT-py's sentencepiece
transform, beam search and -replace_unk, -train_from, checkpoint contents, sacreBLEU on the detokenised output,
and the refusal of a checkpoint that would run code."""
import fcntl
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("onmt")
from onmt.models.model_saver import safe_load  # noqa: E402

from onmt_structdrop.tools import nmt_demo as demo, nmt_evaluate as evaluate, nmt_prepare as prepare  # noqa: E402
from onmt_structdrop.tools.onmt_runs import alternating_speed  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "recipes" / "sample_multi30k_deen"
SUBWORDS = ("-transforms", "sentencepiece", "-src_subword_model", "data/spm.model", "-tgt_subword_model",
            "data/spm.model")
MODELS = {
    "sd_ifrnn": "encoder_type: sd_brnn\ndecoder_type: sd_ifrnn\nbridge: true\nsd_recurrent_dropout: [0.25]\n"
                "sd_mask_mode: pool\nsd_seed: 3\n",
    "sd_rnn": "encoder_type: sd_rnn\ndecoder_type: sd_rnn\nsd_recurrent_dropout: [0.2]\nsd_mask_mode: time\n",
    "stock": "encoder_type: brnn\ndecoder_type: rnn\ninput_feed: 1\n",
}


def onmt(command, *args, cwd, check=True):
    module = {"build_vocab": "onmt.bin.build_vocab", "train": "onmt.bin.train", "translate": "onmt.bin.translate"}
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="2")
    result = subprocess.run([sys.executable, "-m", module[command], *map(str, args)], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def write_config(work, name, steps):
    return demo.write_config(work, name, MODELS[name], steps, hidden=32, report_every=2)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    prepare.prepare("multi30k_deen", work / "data", source=SAMPLE, max_train=400, vocab_size=500)
    write_config(work, "sd_ifrnn", 6)
    onmt("build_vocab", "-config", "sd_ifrnn.yaml", "-n_sample", "-1", cwd=work)
    return work


@pytest.fixture(scope="module")
def trained(work):
    """The structured model, trained for 6 steps."""
    onmt("train", "-config", "sd_ifrnn.yaml", cwd=work)
    return work / "runs" / "sd_ifrnn" / "model_step_6.pt"


def translate(work, model, *extra):
    out = work / f"pred_{model.stem}.txt"
    onmt("translate", "-model", model, "-src", "data/test.src", "-output", out, "-beam_size", "5",
         "-max_length", "20", *SUBWORDS, *extra, cwd=work)
    lines = out.read_text().splitlines()
    assert not any("\u2581" in line for line in lines)  # the transform detokenised its pieces
    return lines


def test_checkpoint_keeps_the_plugins_parameters_and_options(trained):
    checkpoint = safe_load(trained)
    opt = checkpoint["opt"]
    assert (opt.encoder_type, opt.decoder_type) == ("sd_brnn", "sd_ifrnn")
    assert opt.sd_recurrent_dropout == [0.25] and opt.sd_mask_mode == "pool" and opt.sd_seed == 3
    assert {"encoder.rnn.weight_hh_l1_reverse", "decoder.rnn.layers.1.weight_hh", "encoder.bridge.0.weight"} <= set(
        checkpoint["model"])
    assert set(checkpoint["generator"]) == {"weight", "bias"}


def test_the_training_log_reports_what_structured_dropout_did(trained, work):
    reports = re.findall(r"Structured dropout: ([\d.]+)% of LSTM and generator multiply-adds skipped; keep rate: "
                         r"(.*); backend calls: (.*)", (work / "runs" / "sd_ifrnn" / "train.log").read_text())
    assert len(reports) == 3  # every report_every (2) of 6 steps
    for skipped, keep, backends in reports:
        rates = dict(item.rsplit(" ", 1) for item in keep.split(", "))
        assert {"encoder input", "encoder recurrent", "decoder embedding", "decoder output",
                "decoder recurrent"} <= set(rates)
        # pool mode keeps round(0.7 n) units of each set (dropout 0.3), recurrent dropout 0.25
        assert 0.6 < float(rates["encoder input"]) < 0.8 and 0.7 < float(rates["decoder recurrent"]) < 0.8
        assert 5 < float(skipped) < 40 and re.fullmatch(r"(\w+ \d+)(, \w+ \d+)*", backends)


def test_translate_with_beam_search_replace_unk_and_attention(trained, work):
    # attention reaches beam search batch first: -replace_unk, -attn_debug and the coverage penalty read it
    lines = translate(work, trained, "-replace_unk", "-coverage_penalty", "wu", "-beta", "0.2", "-attn_debug")
    assert len(lines) == len((work / "data" / "test.src").read_text().splitlines()) == 200


def test_train_from_resumes(trained, work):
    onmt("train", "-config", "sd_ifrnn.yaml", "-train_from", trained, "-train_steps", "8",
         "-save_checkpoint_steps", "8", cwd=work)
    resumed = safe_load(work / "runs" / "sd_ifrnn" / "model_step_8.pt")
    assert resumed["opt"].sd_mask_mode == "pool"
    log = (work / "runs" / "sd_ifrnn" / "train.log").read_text()
    assert "Loading checkpoint from" in log and re.search(r"Step\s+8/", log)  # reports reach -log_file


@pytest.mark.parametrize("name", ["sd_rnn", "stock"])
def test_other_models_train_and_translate(name, work):
    write_config(work, name, 4)
    onmt("train", "-config", f"{name}.yaml", cwd=work)
    reported = "Structured dropout:" in (work / "runs" / name / "train.log").read_text()
    assert reported == (name != "stock")  # the stock model trains without the plugin's report
    lines = translate(work, work / "runs" / name / "model_step_4.pt", "-replace_unk")
    assert len(lines) == 200


def test_the_demo_times_the_models_in_alternating_rounds(work):
    configs = {"structdrop": write_config(work, "sd_ifrnn", 6), "baseline": write_config(work, "stock", 6)}
    table = alternating_speed(work, configs, rounds=2, steps=6, threads=1)
    logs = sorted(p.name for p in (work / "runs" / "speed").glob("*.log"))
    assert logs == ["structdrop_baseline_r1.log", "structdrop_baseline_r2.log", "structdrop_r1.log",
                    "structdrop_r2.log"]
    assert re.search(r"\| structdrop \| 2 \| \d+ \| \d\.\d\dx \|", table) and "median of 2" in table


def test_evaluate_reports_bleu_and_speed(trained, work, monkeypatch):
    monkeypatch.chdir(work)  # recipes' paths are relative to where onmt_train ran
    result = evaluate.evaluate(work / "sd_ifrnn.yaml", beam=2)
    assert 0.0 <= result["bleu"] <= 100.0 and result["src_tok_s"] > 0 and "nrefs:1" in result["bleu_signature"]
    assert (Path(result["checkpoint"]).parent / "eval.json").is_file()
    assert (Path(result["checkpoint"]).parent / "test.pred").read_text().count("\n") == 200
    assert not (Path(result["checkpoint"]).parent / "test.pred.tok").exists()  # no tokenised detour


def test_the_training_data_is_plain_text_and_the_vocabulary_holds_pieces(work):
    first = (work / "data" / "train.src").read_text(encoding="utf-8").splitlines()[0]
    assert "\u2581" not in first and first == first.lower() and " ".join(first.split()) == first
    pieces = [line.split("\t")[0] for line in (work / "runs" / "vocab.src").read_text().splitlines()]
    assert sum(p.startswith("\u2581") for p in pieces) > len(pieces) // 3  # onmt_build_vocab ran the transform


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_runs_code_is_refused(trained, work):
    marker = work / "pwned"
    evil = torch.load(trained, map_location="cpu", weights_only=False)
    evil["opt"].payload = _RunsCode(marker)
    torch.save(evil, work / "evil.pt")
    result = onmt("translate", "-model", "evil.pt", "-src", "data/test.src", "-output", "x.txt", cwd=work,
                  check=False)
    assert result.returncode == 2 and one_line_error(result.stderr).startswith("translate.py: error: refusing to "
                                                                                "load evil.pt")
    result = onmt("train", "-config", "sd_ifrnn.yaml", "-train_from", "evil.pt", "-train_steps", "10", cwd=work,
                  check=False)
    assert result.returncode == 2 and "error: refusing to load evil.pt" in one_line_error(result.stderr)
    assert not marker.exists()


def one_line_error(stderr):
    """The one line of an error message, after checking that stderr holds no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize("command", ["build_vocab", "train"])
def test_a_missing_data_file_is_one_line_from_the_stock_commands(command, work):
    config = (work / "sd_ifrnn.yaml").read_text().replace("data/train.src", "data/nowhere.src")
    (work / "missing.yaml").write_text(config)
    result = onmt(command, "-config", "missing.yaml", cwd=work, check=False)
    assert result.returncode == 2 and one_line_error(result.stderr).endswith(
        "error: corpus_1/path_src file not found: 'data/nowhere.src'; check the path (relative to where the command "
        "runs)")


def test_the_vocabulary_round_trip_keeps_empty_and_whitespace_holding_tokens(tmp_path):
    """onmt_build_vocab writes every token it counts, the empty one of repeated spaces and ones holding tabs or
    Unicode spaces included; onmt_train must read back the same vocabulary (patches/.../05-vocab-round-trip)."""
    from collections import Counter

    from onmt.inputters.inputter import _read_vocab_file
    lines = ["a  b c", "x\u00a0y  z", "p\tq  r", "s\u2003t u"] * 3
    for name in ("train.src", "train.tgt"):
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "run.yaml").write_text(
        "save_data: run/data\nsrc_vocab: vocab.src\ntgt_vocab: vocab.tgt\noverwrite: true\n"
        "data:\n  corpus_1:\n    path_src: train.src\n    path_tgt: train.tgt\n"
        "encoder_type: rnn\ndecoder_type: rnn\nlayers: 1\nhidden_size: 8\nword_vec_size: 8\n"
        "batch_size: 4\ntrain_steps: 2\nreport_every: 1\nbucket_size: 64\nsave_model: run/model\n"
        "save_checkpoint_steps: 100\n", encoding="utf-8")
    onmt("build_vocab", "-config", "run.yaml", "-n_sample", "-1", cwd=tmp_path)
    counted = Counter(token for line in lines for token in line.split(" "))
    assert "" in counted and "x\u00a0y" in counted and "p\tq" in counted
    assert sorted(_read_vocab_file(str(tmp_path / "vocab.src"), 1)) == sorted(counted)
    onmt("train", "-config", "run.yaml", cwd=tmp_path)  # reads that vocabulary back and trains


def test_prepare_names_a_line_that_is_not_utf8(tmp_path, capsys):
    source = tmp_path / "src"
    source.mkdir()
    for path in SAMPLE.iterdir():
        (source / path.name).write_bytes(path.read_bytes())
    lines = (source / "train.de").read_bytes().split(b"\n")
    lines[4] += b" caf\xe9"
    (source / "train.de").write_bytes(b"\n".join(lines))
    with pytest.raises(SystemExit) as exit_info:
        prepare.main(["multi30k_deen", "--source", str(source), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "train.de:5: not UTF-8 (byte 0xe9" in err


def test_compare_trains_a_config_and_its_stock_twin_in_one_command(work, monkeypatch, capsys):
    """A config as the README's "Your own config" shows it (no log_file) used to die with KeyError: 'log_file'
    after training both models, and a second run into the same folder scored the old checkpoints."""
    from onmt_structdrop.tools import nmt_compare
    monkeypatch.chdir(work)
    shutil.rmtree(work / "runs" / "sd_rnn", ignore_errors=True)  # another test trained this config
    config = write_config(work, "sd_rnn", 4)
    config.write_text("".join(line for line in config.read_text().splitlines(keepends=True)
                              if not line.startswith("log_file:")))
    nmt_compare.main(["sd_rnn.yaml", "--beam", "1", "--speed-rounds", "1", "--speed-steps", "4"])
    for log in (work / "runs" / "sd_rnn" / "train.log", work / "runs" / "sd_rnn" / "stock" / "train.log"):
        assert re.search(r"Step\s+4/", log.read_text())  # each run's log beside its checkpoints
    twin = work / "runs" / "sd_rnn" / "stock" / "sd_rnn_stock.yaml"
    lines = twin.read_text().splitlines()
    assert "encoder_type: rnn" in lines and not any(line.startswith("sd_") for line in lines)
    assert (work / "runs" / "sd_rnn" / "stock" / "model_step_4.pt").is_file()
    table = (work / "runs" / "sd_rnn" / "comparison.md").read_text()
    assert table in capsys.readouterr().out
    rows = table.splitlines()[2:]
    assert re.fullmatch(r"\| sd_rnn \| sd_rnn / sd_rnn \| 4 \| [\d.]+ \| [-+][\d.]+ \|", rows[0])
    assert re.fullmatch(r"\| sd_rnn_stock \| rnn / rnn \| 4 \| [\d.]+ \| \+0\.00 \|", rows[1])  # the twin: base
    assert re.search(r"\| sd_rnn \| 1 \| \d+ \| \d\.\d\dx \|", table)  # the alternating round's ratio
    assert sorted(p.name for p in (work / "runs" / "sd_rnn" / "speed").glob("*.log")) == [
        "sd_rnn_baseline_r1.log", "sd_rnn_r1.log"]
    with pytest.raises(SystemExit) as exit_info:
        nmt_compare.main(["sd_rnn.yaml", "--beam", "1", "--speed-rounds", "0"])
    assert exit_info.value.code == 2
    assert "runs/sd_rnn/model_step_4.pt is a checkpoint of an earlier run, which would be scored in place of this " \
           "run's" in capsys.readouterr().err


@pytest.mark.parametrize("damage, message", [
    ("missing", "nowhere.pt not found"),
    ("empty", "bad.pt is empty (a run killed while saving it?)"),
    ("truncated", "bad.pt is truncated or not written by torch.save at all"),
    ("a directory", "bad.pt is a directory: name the .pt file itself"),
    ("not a checkpoint", "bad.pt is not an OpenNMT-py checkpoint (it lacks the model or its options)"),
])
def test_a_bad_model_file_is_one_line_from_translate(damage, message, trained, work):
    bad = work / "bad.pt"
    shutil.rmtree(bad, ignore_errors=True) if bad.is_dir() else bad.unlink(missing_ok=True)
    if damage == "empty":
        bad.write_bytes(b"")
    elif damage == "truncated":
        bad.write_bytes(trained.read_bytes()[:5000])
    elif damage == "a directory":
        bad.mkdir()
    elif damage == "not a checkpoint":
        torch.save({"weights": torch.zeros(2)}, bad)
    result = onmt("translate", "-model", "nowhere.pt" if damage == "missing" else "bad.pt", "-src", "data/test.src",
                  "-output", "x.txt", cwd=work, check=False)
    assert result.returncode == 2 and message in one_line_error(result.stderr)


@pytest.mark.parametrize("command", ["build_vocab", "translate"])
@pytest.mark.parametrize("damage, message", [
    ("missing", "-src_subword_model data/nowhere.model: not found"),
    ("empty", "-src_subword_model data/nowhere.model is not a SentencePiece model"),
    ("a directory", "-src_subword_model data/nowhere.model: is a directory"),
])
def test_a_bad_sentencepiece_model_is_one_line(command, damage, message, trained, work):
    bad = work / "data" / "nowhere.model"
    shutil.rmtree(bad, ignore_errors=True) if bad.is_dir() else bad.unlink(missing_ok=True)
    if damage == "empty":
        bad.write_bytes(b"")
    elif damage == "a directory":
        bad.mkdir()
    if command == "build_vocab":
        (work / "spm_bad.yaml").write_text((work / "sd_ifrnn.yaml").read_text().replace(
            "src_subword_model: data/spm.model", "src_subword_model: data/nowhere.model"))
        result = onmt("build_vocab", "-config", "spm_bad.yaml", "-n_sample", "5", "-save_data", "runs/spm_bad",
                      cwd=work, check=False)
    else:
        result = onmt("translate", "-model", trained, "-src", "data/test.src", "-output", "x.txt", "-transforms",
                      "sentencepiece", "-src_subword_model", "data/nowhere.model", "-tgt_subword_model",
                      "data/spm.model", cwd=work, check=False)
    assert result.returncode == 2 and message in one_line_error(result.stderr)


def test_pretrained_word_vectors_that_would_run_code_are_refused(trained, work):
    marker = work / "pwned_by_vectors"
    torch.save({"vectors": _RunsCode(marker)}, work / "vectors.pt")
    result = onmt("train", "-config", "sd_ifrnn.yaml", "-pre_word_vecs_enc", "vectors.pt", "-train_steps", "1",
                  "-save_model", "runs/vectors/model", cwd=work, check=False)
    assert result.returncode == 2 and "error: refusing to load vectors.pt" in one_line_error(result.stderr)
    assert not marker.exists()


def test_train_from_a_checkpoint_of_another_model_names_what_is_used(trained, work):
    """OpenNMT-py builds the checkpoint's model (unless -override_opts); that used to happen without a word."""
    write_config(work, "stock", 4)
    (work / "stock_sd.yaml").write_text((work / "stock.yaml").read_text().replace(
        "encoder_type: brnn", "encoder_type: sd_brnn").replace("decoder_type: rnn", "decoder_type: sd_ifrnn"))
    result = onmt("train", "-config", "stock_sd.yaml", "-train_from", trained, "-train_steps", "7",
                  "-sd_mask_mode", "batch", "-save_model", "runs/from/model", "-save_checkpoint_steps", "7", cwd=work)
    warning = [line for line in result.stderr.splitlines() if "-train_from" in line]
    assert len(warning) == 1 and "the model is built as the checkpoint says" in warning[0]
    assert "sd_mask_mode 'pool' (the config: 'batch')" in warning[0]
    assert safe_load(work / "runs" / "from" / "model_step_7.pt")["opt"].sd_mask_mode == "pool"


def test_a_second_run_with_the_same_save_model_stops_at_once(trained, work):
    """onmt_train holds <save_model>.lock while it trains (and lets it go when it ends: the run above held the
    same folder's): a second run with the same -save_model is one line, and writes nothing there."""
    held = work / "runs" / "held"
    held.mkdir(parents=True, exist_ok=True)
    with open(held / "model.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("pid 1234\n")
        lock.flush()
        result = onmt("train", "-config", "sd_ifrnn.yaml", "-save_model", "runs/held/model", cwd=work, check=False)
    assert result.returncode == 2 and one_line_error(result.stderr) == (
        "train.py: error: -save_model runs/held/model is in use by another run (pid 1234): wait for it to end, or "
        "choose another save_model")
    assert sorted(p.name for p in held.iterdir()) == ["model.lock"]
    with open(trained.parent / "model.lock") as released:  # the finished run's lock is free
        fcntl.flock(released, fcntl.LOCK_EX | fcntl.LOCK_NB)

"""PTB language-model adapter: the model against a dense reference, the CLI end to end on a tiny corpus
(logs, history, checkpoint, plot, resume), and clear errors on bad input."""
import json

import pytest
import torch
from torch.nn import functional as F

from onmt_structdrop.reference import reference_lstm
from onmt_structdrop.tasks import lm
from onmt_structdrop.tasks.config import build_parser
from onmt_structdrop.tasks.corpus import Vocabulary, batchify, load_corpus

from task_data import write_ptb

TINY = ["-hidden_size", "12", "-batch_size", "4", "-bptt", "5", "-eval_batch_size", "2", "-threads", "1"]


def run_cli(tmp_path, *extra, name="run"):
    data = write_ptb(tmp_path / "ptb")
    return lm.main(["-config", "recipes/ptb_small.yaml", "-data", str(data), "-save_dir", str(tmp_path / name),
                    *TINY, *extra])


@pytest.mark.parametrize("mode", ["time", "batch", "rbd", "bernoulli"])
def test_structured_model_equals_a_dense_reference_with_its_masks(mode):
    torch.manual_seed(0)
    model = lm.LanguageModel(23, 6, 2, dropout=0.4, recurrent_dropout=0.3, mask_mode=mode).double()
    x = torch.randint(23, (5, 3))
    logits, _ = model(x)
    logits.sin().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    e = F.embedding(x, params["embed.weight"])
    lstm = {n.split(".", 1)[1]: p for n, p in params.items() if n.startswith("rnn.")}
    y, _ = reference_lstm(lstm, e, model.rnn.last_masks, num_layers=2)
    out_mask = model.out.last_mask
    y = y * (out_mask if out_mask.dim() == 3 else out_mask.unsqueeze(1))
    expected = y @ params["out.weight"].t() + params["out.bias"]
    torch.testing.assert_close(logits, expected, rtol=1e-10, atol=1e-10)
    expected.sin().sum().backward()
    for n, p in params.items():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-9, atol=1e-10, msg=n)


def test_both_implementations_share_parameters_and_agree_in_eval():
    torch.manual_seed(0)
    structured = lm.LanguageModel(31, 8, 2, dropout=0.5, recurrent_dropout=0.2).eval()
    standard = lm.LanguageModel(31, 8, 2, dropout=0.5, impl="standard").eval()
    standard.load_state_dict(structured.state_dict())
    x = torch.randint(31, (7, 4))
    torch.testing.assert_close(structured(x)[0], standard(x)[0], rtol=1e-5, atol=1e-6)


def test_learning_rate_follows_zaremba_schedule():
    args = build_parser("t", "", lm.OPTIONS).parse_args(["-lr", "1", "-lr_decay", "0.5", "-decay_after", "4"])
    assert [lm.learning_rate(args, e) for e in (1, 4, 5, 6)] == [1.0, 1.0, 0.5, 0.25]


def test_cli_trains_logs_plots_and_reports_test_perplexity(tmp_path):
    history, test_ppl = run_cli(tmp_path, "-epochs", "2", "-dropout", "0.3")
    run = tmp_path / "run"
    assert [e["epoch"] for e in history] == [1, 2] and 1 < test_ppl < 100  # 16-word vocabulary
    assert history[1]["valid_ppl"] < history[0]["valid_ppl"] * 1.5
    assert all(e["words_per_s"] > 0 for e in history)
    saved = json.loads((run / "history.json").read_text())
    assert saved["epochs"][-1]["test_ppl"] == pytest.approx(test_ppl)
    assert saved["config"]["dropout_impl"] == "structured" and saved["config"]["mask_mode"] == "time"
    log = (run / "train.log").read_text()
    assert "epoch 2 lr 1 train ppl" in log and "test ppl" in log
    assert (run / "curves.png").stat().st_size > 1000 and (run / "last.pt").is_file()


def test_resuming_gives_the_same_run_as_training_straight_through(tmp_path):
    straight, _ = run_cli(tmp_path, "-epochs", "3", "-dropout", "0.4", "-decay_after", "1", name="straight")
    run_cli(tmp_path, "-epochs", "1", "-dropout", "0.4", "-decay_after", "1", name="resumed")
    resumed, _ = run_cli(tmp_path, "-epochs", "3", "-dropout", "0.4", "-decay_after", "1", "-resume", "true",
                         name="resumed")
    assert [e["valid_ppl"] for e in resumed] == [e["valid_ppl"] for e in straight]
    assert "resumed" in (tmp_path / "resumed" / "train.log").read_text()


def test_an_occupied_save_dir_or_a_changed_model_is_refused(tmp_path, capsys):
    run_cli(tmp_path, "-epochs", "1")
    with pytest.raises(SystemExit):
        run_cli(tmp_path, "-epochs", "2")
    assert "already holds a run" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(tmp_path, "-epochs", "2", "-resume", "true", "-hidden_size", "14")
    assert "hidden_size 12 -> 14" in capsys.readouterr().err


def test_the_baseline_recipe_runs_the_user_alternative(tmp_path):
    data = write_ptb(tmp_path / "ptb")
    history, _ = lm.main(["-config", "recipes/ptb_small_baseline.yaml", "-data", str(data), "-save_dir",
                          str(tmp_path / "base"), "-epochs", "1", *TINY])
    assert json.loads((tmp_path / "base" / "history.json").read_text())["config"]["dropout_impl"] == "standard"
    model = lm.LanguageModel(10, 4, 2, 0.3, impl="standard")
    assert isinstance(model.rnn, torch.nn.LSTM) and len(history) == 1


@pytest.mark.parametrize("args, message", [
    (["-dropout", "1.0"], "dropout must be in [0, 1), got 1.0"),
    (["-bptt", "0"], "bptt must be >= 1, got 0"),
    (["-lr", "-1"], "lr must be > 0 (and finite), got -1.0"),
    (["-init_range", "inf"], "init_range must be > 0 (and finite), got inf"),
    (["-device", "tpu"], "device must be cpu, cuda or cuda:N, got 'tpu'"),
    (["-mask_mode", "dense"], "invalid choice: 'dense'"),
])
def test_bad_options_are_named(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit):
        run_cli(tmp_path, *args)
    assert message in capsys.readouterr().err


def test_missing_and_empty_corpus_files_are_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        lm.main(["-data", str(tmp_path / "nowhere"), "-save_dir", str(tmp_path / "r1")])
    assert "corpus directory not found" in capsys.readouterr().err
    data = write_ptb(tmp_path / "ptb")
    (data / "ptb.test.txt").unlink()
    with pytest.raises(SystemExit):
        lm.main(["-data", str(data), "-save_dir", str(tmp_path / "r2")])
    assert "ptb.test.txt" in capsys.readouterr().err
    (data / "ptb.test.txt").write_text("\n\n")
    with pytest.raises(SystemExit):
        lm.main(["-data", str(data), "-save_dir", str(tmp_path / "r3")])
    assert "ptb.test.txt is empty" in capsys.readouterr().err


def test_words_outside_the_training_vocabulary():
    vocab = Vocabulary(["a", "b", "<unk>"])
    assert vocab.encode(["b", "zzz"], "valid").tolist() == [1, 2]
    with pytest.raises(ValueError, match="'zzz'.*no <unk>"):
        Vocabulary(["a", "b"]).encode(["zzz"], "valid.txt")


def test_corpus_reading_and_batching(tmp_path):
    data = write_ptb(tmp_path)
    vocab, ids = load_corpus(data)
    lines = (data / "ptb.train.txt").read_text().splitlines()
    assert ids["train"].numel() == sum(len(line.split()) + 1 for line in lines)  # one <eos> per line
    b = batchify(torch.arange(11), 3)
    assert b.tolist() == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]


class RunsCode:
    def __reduce__(self):
        return (print, ("this checkpoint ran code",))


def _break_checkpoint(path, kind):
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "not a checkpoint":
        path.write_bytes(bytes(range(256)) * 8)
    elif kind == "another model's":
        state = torch.load(path, weights_only=True)
        torch.save({**state, "config": {"word_dim": "100"}}, path)
    elif kind == "code-running":
        torch.save({"model": RunsCode()}, path)


@pytest.mark.parametrize("kind, message", [
    ("empty", "is empty"), ("truncated", "is truncated or not a torch checkpoint"),
    ("not a checkpoint", "is truncated or not a torch checkpoint"), ("another model's", "another model"),
    ("code-running", "could run code when loaded; refused"),
])
def test_a_bad_checkpoint_is_named_in_one_line(tmp_path, capsys, kind, message):
    run_cli(tmp_path, "-epochs", "1")
    capsys.readouterr()
    _break_checkpoint(tmp_path / "run" / "last.pt", kind)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(tmp_path, "-epochs", "2", "-resume", "true")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and message in err and "last.pt" in err
    assert "this checkpoint ran code" not in capsys.readouterr().out


def test_a_corpus_that_is_not_utf8_is_named_with_its_line(tmp_path, capsys):
    data = write_ptb(tmp_path / "ptb")
    (data / "ptb.valid.txt").write_bytes(" a b \n caf\xe9 b \n".encode("latin1"))
    with pytest.raises(SystemExit) as exit_info:
        lm.main(["-data", str(data), "-save_dir", str(tmp_path / "r"), *TINY])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "ptb.valid.txt:2: not UTF-8 (byte 0xe9 at column 5)" in err and "iconv" in err
    with pytest.raises(ValueError, match="not UTF-8"):  # -debug true: the error itself, with its traceback
        lm.main(["-data", str(data), "-save_dir", str(tmp_path / "r2"), "-debug", "true", *TINY])

"""CoNLL-2003 NER adapter: reading the original files, the tagger against a dense reference, the CLI end to
end on tiny generated data (scores, checkpoints, resume), and clear errors on bad input."""
import copy
import json

import pytest
import torch
from seqeval.metrics import f1_score
from torch.nn import functional as F

from onmt_structdrop.reference import reference_lstm
from onmt_structdrop.tasks import ner
from onmt_structdrop.tasks.conll import iob1_to_iob2, read_conll

from task_data import write_conll

TINY = ["-word_dim", "8", "-char_dim", "4", "-char_filters", "5", "-hidden_size", "12", "-batch_size", "8",
        "-threads", "1", "-lr", "0.02"]


def run_cli(tmp_path, *extra, name="run", recipe="recipes/conll2003.yaml"):
    files = write_conll(tmp_path / "conll")
    return ner.main(["-config", recipe, "-train", str(files["eng.train"]), "-dev", str(files["eng.testa"]),
                     "-test", str(files["eng.testb"]), "-save_dir", str(tmp_path / name), *TINY, *extra])


def test_reading_skips_docstart_lines_in_both_forms(tmp_path):
    path = tmp_path / "eng.testb"
    path.write_text("-DOCSTART- -X- -X- O\n\nEU NNP I-NP I-ORG\nrejects VBZ I-VP O\n\n-DOCSTART- -X- O O\n"
                    "Peter NNP I-NP I-PER\nBlackburn NNP I-NP I-PER\n\n\n")
    sentences = read_conll(path)
    assert [s.words for s in sentences] == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert [s.tags for s in sentences] == [["I-ORG", "O"], ["I-PER", "I-PER"]]


def test_iob1_becomes_iob2_with_the_same_spans():
    iob1 = ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "I-ORG", "I-ORG", "O", "B-MISC"]
    iob2 = iob1_to_iob2(iob1)
    assert iob2 == ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "B-ORG", "I-ORG", "O", "B-MISC"]
    # conlleval reads both taggings as the same entities
    assert f1_score([iob1], [iob2]) == 1.0 and f1_score([iob2], [iob1]) == 1.0


@pytest.mark.parametrize("text, message", [
    ("EU NNP I-NP I-ORG\nrejects VBZ O\n", ":2: expected 4 columns like the first token line, got 3"),
    ("EU NNP I-NP I-ORG\nrejects VBZ I-VP X-MISC\n", ":2: 'X-MISC' is not an IOB tag"),
    ("EU\n", ":1: expected a word and a tag"),
    ("\n-DOCSTART- -X- O O\n\n", "holds no sentences"),
    ("", "holds no sentences"),
])
def test_malformed_files_are_named_with_their_line(tmp_path, text, message):
    path = tmp_path / "bad.conll"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        read_conll(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="CoNLL file not found: .*eng.train"):
        read_conll(tmp_path / "eng.train")


@pytest.mark.parametrize("mode", ["time", "tbd", "bernoulli"])
def test_structured_tagger_equals_a_dense_reference_with_its_masks(mode):
    torch.manual_seed(0)
    model = ner.Tagger(20, 9, 5, word_dim=4, char_dim=3, char_filters=2, hidden=5, layers=2, dropout=0.4,
                       recurrent_dropout=0.3, mask_mode=mode, crf=False).double()
    lengths = torch.tensor([4, 6, 2])
    words = torch.randint(2, 20, (6, 3)) * (torch.arange(6).unsqueeze(1) < lengths)
    chars = torch.randint(1, 9, (6, 3, 4)) * (words > 0).unsqueeze(2)
    scores = model.emissions(words, chars, lengths)
    mask = torch.arange(6).unsqueeze(1) < lengths
    scores[mask].sin().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    ref_chars = copy.deepcopy(model.chars)  # the char CNN is plain torch: a copy is its own reference
    ref_chars.zero_grad()
    x = torch.cat([F.embedding(words, params["words.weight"]), ref_chars(chars)], dim=2)
    lstm = {n.split(".", 1)[1]: p for n, p in params.items() if n.startswith("rnn.")}
    y, _ = reference_lstm(lstm, x, model.rnn.last_masks, lengths=lengths, num_layers=2, bidirectional=True)
    out_mask = model.out.last_mask
    expected = (y * (out_mask if out_mask.dim() == 3 else out_mask.unsqueeze(1))) @ params["out.weight"].t() \
        + params["out.bias"]
    torch.testing.assert_close(scores[mask], expected[mask], rtol=1e-10, atol=1e-10)
    expected[mask].sin().sum().backward()
    params.update({"chars." + n: p for n, p in ref_chars.named_parameters()})
    for n, p in params.items():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-9, atol=1e-10, msg=n)


def test_both_implementations_share_parameters_and_agree_in_eval():
    torch.manual_seed(0)
    structured = ner.Tagger(20, 9, 5, word_dim=4, char_dim=3, char_filters=2, hidden=5).eval()
    standard = ner.Tagger(20, 9, 5, word_dim=4, char_dim=3, char_filters=2, hidden=5, impl="standard").eval()
    standard.load_state_dict(structured.state_dict())
    batch = {"words": torch.randint(2, 20, (6, 3)), "chars": torch.randint(1, 9, (6, 3, 4)),
             "lengths": torch.tensor([6, 6, 6]), "mask": torch.ones(6, 3, dtype=torch.bool)}
    assert structured.predict(batch) == standard.predict(batch)
    torch.testing.assert_close(structured.loss({**batch, "tags": torch.zeros(6, 3, dtype=torch.long)}),
                               standard.loss({**batch, "tags": torch.zeros(6, 3, dtype=torch.long)}))


@pytest.mark.parametrize("crf", ["true", "false"])
def test_cli_learns_the_tiny_task_and_keeps_its_best_epoch(tmp_path, crf):
    history = run_cli(tmp_path, "-epochs", "6", "-crf", crf)
    run = tmp_path / "run"
    assert [e["epoch"] for e in history] == list(range(1, 7))
    assert max(e["dev_f1"] for e in history) > 60  # a handful of entity names: learnable in a few epochs
    assert all(0 <= e[k] <= 100 for e in history for k in ("dev_f1", "test_f1", "dev_precision", "test_recall"))
    log = (run / "train.log").read_text()
    assert "epoch 6 lr 0.02 dev F1" in log and "best dev F1" in log
    assert {"B-PER", "I-PER", "B-LOC"} <= set(log.split("tags ")[1].split(";")[0].split())  # trained as IOB2
    assert (run / "best.pt").is_file() and (run / "curves.png").stat().st_size > 1000
    assert json.loads((run / "history.json").read_text())["config"]["crf"] == ("True" if crf == "true" else "False")


def test_resuming_gives_the_same_run_as_training_straight_through(tmp_path):
    straight = run_cli(tmp_path, "-epochs", "3", name="straight")
    run_cli(tmp_path, "-epochs", "2", name="resumed")
    resumed = run_cli(tmp_path, "-epochs", "3", "-resume", "true", name="resumed")
    assert [e["dev_f1"] for e in resumed] == [e["dev_f1"] for e in straight]
    assert [e["train_loss"] for e in resumed] == [e["train_loss"] for e in straight]


def test_the_baseline_recipe_and_pretrained_embeddings(tmp_path):
    vectors = tmp_path / "vectors.txt"
    vectors.write_text("germany " + " ".join(["0.5"] * 8) + "\nzzz " + " ".join(["1"] * 8) + "\n")
    history = run_cli(tmp_path, "-epochs", "1", "-pretrained_embeddings", str(vectors),
                      recipe="recipes/conll2003_baseline.yaml")
    log = (tmp_path / "run" / "train.log").read_text()
    assert "standard dropout" in log and "pretrained embeddings: 1 of" in log and len(history) == 1
    vectors.write_text("germany 0.5 0.5\n")
    with pytest.raises(ValueError, match=r"vectors.txt:1: expected a word and 8 numbers"):
        ner.load_pretrained(torch.nn.Embedding(5, 8), ner.Index(["germany"]), vectors, None)


def test_malformed_data_and_bad_options_stop_the_cli_with_a_message(tmp_path, capsys):
    files = write_conll(tmp_path / "conll")
    with files["eng.testa"].open("a") as fh:
        fh.write("Paris NNP I-LOC\n")
    with pytest.raises(SystemExit):
        ner.main(["-train", str(files["eng.train"]), "-dev", str(files["eng.testa"]),
                  "-test", str(files["eng.testb"]), "-save_dir", str(tmp_path / "r")])
    assert "eng.testa:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(tmp_path, "-dropout", "-0.1", name="r2")
    assert "dropout must be in [0, 1), got -0.1" in capsys.readouterr().err


def test_batches_from_the_cache_equal_fresh_ones(monkeypatch):
    from onmt_structdrop.tasks.conll import Sentence
    sentences = [Sentence(["EU", "rejects", "German", "call"], ["B-ORG", "O", "B-MISC", "O"]),
                 Sentence(["Peter", "Blackburn"], ["B-PER", "I-PER"]), Sentence(["Yes"], ["O"])]
    indexes = ner.build_indexes(sentences, 1)
    fresh = ner.make_batch(sentences, *indexes, "cpu")
    assert fresh["chars"].shape == (4, 3, 9) and fresh["words"][2, 1] == 0 and fresh["chars"][0, 1, 5] == 0
    cache = {}
    ner.make_batch(sentences[:2], *indexes, "cpu", cache)
    calls = []
    real_encode = ner.encode
    monkeypatch.setattr(ner, "encode", lambda *a: calls.append(a[0]) or real_encode(*a))
    cached = ner.make_batch(sentences, *indexes, "cpu", cache)
    assert calls == [sentences[2]]  # only the sentence not seen before is encoded
    for key in ("words", "chars", "tags", "mask", "lengths"):
        assert torch.equal(cached[key], fresh[key]), key

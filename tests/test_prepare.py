"""nmt_prepare: the IWSLT'14 split made from an archive with the release's layout (fairseq's cleaning and split),
the checks against the published files, SentencePiece and BPE output, and one-line errors."""
import gzip
import io
import json
import tarfile

import pytest

pytest.importorskip("sacremoses")
pytest.importorskip("sentencepiece")
from onmt_structdrop.tools import iwslt14, nmt_prepare as prepare  # noqa: E402

HEADER = ("<url>http://www.ted.com/talks/{talk}.html</url>\n<keywords>talks, science</keywords>\n"
          "<talkid>{talk}</talkid>\n<title>{title}</title>\n<description>{description}</description>\n")
TEST_SETS = {"IWSLT14.TED.dev2010": 3, "IWSLT14.TEDX.dev2012": 2, "IWSLT14.TED.tst2010": 2,
             "IWSLT14.TED.tst2011": 1, "IWSLT14.TED.tst2012": 2}


def talk_pairs(talk, n):
    """(de, en) sentence lines of one talk; some of them clean-corpus-n drops."""
    pairs = [(f"Satz Nummer {talk}-{i} ist hier, nicht dort.", f"Sentence number {talk}-{i} isn't there.")
             for i in range(n)]
    pairs[3] = ("Ja.", "Yes, it is what it is, really and truly.")  # 2 against 13 words: ratio > 1.5
    pairs[5] = ("   ", "Nothing on the other side.")  # a blank side
    pairs[7] = (" ".join(["Wort"] * 180), " ".join(["word"] * 180))  # over 175 words
    return pairs


def xml(name, lang, count):
    words = {"de": "Das ist’s, Test {i} von {name}!", "en": "That’s it, test {i} of {name}!"}[lang]
    segs = "".join(f'<seg id="{i + 1}"> {words.format(i=i, name=name.split(".")[-1])} </seg>\n'
                   for i in range(count))
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<mteval>\n<srcset setid="{name}" srclang="de">\n'
            f'<doc docid="1" genre="lectures">\n<url>http://www.ted.com/talks/x.html</url>\n'
            f'<talkid>1</talkid>\n{segs}</doc>\n</srcset>\n</mteval>\n')


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """de-en.tgz with the release's layout: two talks of training text with their tag headers, the test sets
    as XML (stored in another order than the split concatenates them)."""
    folder = tmp_path_factory.mktemp("iwslt14")
    files = {}
    talks = [(1, talk_pairs(1, 30)), (2, talk_pairs(2, 26))]
    for side, lang in enumerate(("de", "en")):
        text = ""
        for talk, pairs in talks:
            text += HEADER.format(talk=talk, title=("Titel", "Title")[side] + f" {talk}: Ein Vortrag",
                                  description=("Beschreibung.", "A description.")[side])
            text += "".join(pair[side] + "\n" for pair in pairs)
        files[f"de-en/train.tags.de-en.{lang}"] = text
        for name, count in reversed(TEST_SETS.items()):
            files[f"de-en/{name}.de-en.{lang}.xml"] = xml(name, lang, count)
    path = folder / "de-en.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_the_split_is_fairseqs(archive):
    splits = iwslt14.split(iwslt14.read_members(archive))
    # kept in order: per talk its title and description lines, then the sentences but the three dropped ones
    kept = []
    for talk, n in ((1, 30), (2, 26)):
        kept += [f"titel {talk} : ein vortrag", "beschreibung ."]
        kept += [f"satz nummer {talk}-{i} ist hier , nicht dort ." for i in range(n) if i not in (3, 5, 7)]
    train_de, train_en = splits["train"]
    valid_de, valid_en = splits["valid"]
    assert valid_de == [kept[i - 1] for i in range(1, len(kept) + 1) if i % 23 == 0] == [kept[22], kept[45]]
    assert train_de == [line for i, line in enumerate(kept, 1) if i % 23]
    assert train_en[2] == "sentence number 1-0 isn &apos;t there ."  # Moses' English contraction, escaped
    assert len(train_en) == len(train_de) and len(valid_en) == len(valid_de)
    test_de, test_en = splits["test"]
    order = [name.split(".")[-1] for name, count in TEST_SETS.items() for _ in range(count)]
    assert [line.rsplit(" ", 2)[1] for line in test_en] == order  # dev2010, dev2012, tst2010..tst2012
    assert test_en[0] == "that &apos;s it , test 0 of dev2010 !"  # U+2019 made an apostrophe first
    assert test_de[0] == "das ist &apos; s , test 0 von dev2010 !"  # not English: split both ways


def test_clean_keeps_what_clean_corpus_n_keeps():
    src = ["a b c", "a", "x  y", "", "w " * 176, "ok"]
    tgt = ["a b c d", "a b", "x\u00a0y", "e", "w " * 176, "k" * 1001]
    assert iwslt14.clean(src, tgt) == (["a b c", "x y"], ["a b c d", "x y"])


def test_a_final_sigma_stays_a_sigma_as_in_perl():
    assert iwslt14.lowercase("ΟΔΟΣ ΑΒΓ") == "οδοσ αβγ"
    assert iwslt14.lowercase("Straße ÄB") == "straße äb"


@pytest.mark.parametrize("where", ["archive", "folder holding it", "extracted folder"])
def test_prepare_from_the_archive(archive, where, tmp_path):
    if where == "archive":
        source = archive
    elif where == "folder holding it":
        source = archive.parent
    else:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp_path / "x", filter="data")
        source = tmp_path / "x" / "de-en"
    info = prepare.prepare("iwslt14_deen", tmp_path / "out", source=source, vocab_size=120)
    out = tmp_path / "out"
    assert info["pairs"] == {"train": 52, "valid": 2, "test": 10}
    assert (out / "fairseq_split" / "valid.de").read_text().splitlines() == (out / "valid.src").read_text().splitlines()
    assert (out / "test.ref").read_text() == (out / "test.tgt").read_text()
    # the checks against the published split run, and say these small files are not it
    assert set(info["checks"]) == set(prepare.FAIRSEQ_IWSLT14)
    assert info["checks"]["valid.de"] == "DIFFERS: 2 lines, published 7283"
    assert (out / "spm.model").is_file() and info["sentencepiece"]["pieces"] <= 120


def test_an_archive_without_a_test_set_is_named_in_one_line(archive, tmp_path, capsys):
    broken = tmp_path / "de-en.tgz"
    with tarfile.open(archive) as src, tarfile.open(broken, "w:gz") as dst:
        for member in src.getmembers():
            if "tst2011.de-en.en" not in member.name:
                dst.addfile(member, src.extractfile(member))
    with pytest.raises(SystemExit) as exit_info:
        prepare.main(["iwslt14_deen", "--source", str(broken), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "lacks IWSLT14.TED.tst2011.de-en.en.xml: is it IWSLT 2014's de-en.tgz?" in err


def test_checks_compare_lines_sha256_and_git_blob_ids(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"hello\n")
    expected = {"a.txt": prepare.Expected(1, git_blob="ce013625030ba8dba906f756967f9e9ca394464a"),  # git hash-object
                "b.txt": prepare.Expected(1)}
    assert prepare.check_files(tmp_path, expected) == {"a.txt": "matches: 1 lines, git blob id"}
    sha = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    assert prepare.check_files(tmp_path, {"a.txt": prepare.Expected(1, sha)})["a.txt"] == "matches: 1 lines, SHA-256"
    assert prepare.check_files(tmp_path, {"a.txt": prepare.Expected(1, "0" * 64)})["a.txt"].startswith("DIFFERS")


def test_stanford_files_are_checked(tmp_path):
    source = tmp_path / "stanford"
    source.mkdir()
    for stem in ("train", "tst2012", "tst2013"):
        (source / f"{stem}.en").write_text("Hello there .\nHow are you ?\n")
        (source / f"{stem}.vi").write_text("Xin chào .\nBạn khỏe không ?\n")
    info = prepare.prepare("iwslt15_envi", tmp_path / "out", source=source, vocab_size=60)
    assert info["checks"]["tst2013.vi"] == "DIFFERS: 2 lines, published 1268"
    assert (tmp_path / "out" / "test.ref").read_text() == "Xin chào .\nBạn khỏe không ?\n"  # cased, as published


def test_bpe_stays_an_option(tmp_path):
    info = prepare.prepare("multi30k_deen", tmp_path, source=prepare_sample(), max_train=200, subword="bpe",
                           bpe_merges=100)
    assert info["subword"] == "bpe" and json.loads((tmp_path / "tokenizer.json").read_text())["mode"] == "aggressive"
    assert "\uffed" in (tmp_path / "train.src").read_text(encoding="utf-8")  # pyonmttok's joiner marks


def prepare_sample():
    from onmt_structdrop.resources import data_path
    return data_path("recipes/sample_multi30k_deen")


def test_a_download_lands_whole_or_not_at_all(tmp_path):
    (tmp_path / "de-en.tgz").write_bytes(b"x" * 100_000)
    got = prepare.fetch((tmp_path / "de-en.tgz").as_uri(), tmp_path / "raw.tgz")
    assert got.read_bytes() == b"x" * 100_000
    with pytest.raises(prepare.DataError, match="cannot download file://.*nowhere.tgz .*; fetch it yourself and pass "
                                                "--source"):
        prepare.fetch((tmp_path / "nowhere.tgz").as_uri(), tmp_path / "never.tgz")
    assert not (tmp_path / "never.tgz").exists()


def rewritten(archive, path, change=None, extra=()):
    """A copy of ``archive`` at ``path``: each member's text through ``change(name, text)``, then ``extra``
    members ``(name, text)``."""
    with tarfile.open(archive) as src, tarfile.open(path, "w:gz") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()
            if change is not None:
                data = change(member.name, data.decode()).encode()
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
        for name, text in extra:
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            dst.addfile(info, io.BytesIO(text.encode()))
    return path


def test_the_split_is_made_once_per_archive_content(archive, tmp_path, monkeypatch):
    calls = []
    real = iwslt14.split
    monkeypatch.setattr(iwslt14, "split", lambda members: calls.append(1) or real(members))
    source = tmp_path / "src" / "de-en.tgz"
    source.parent.mkdir()
    source.write_bytes(archive.read_bytes())
    for _ in range(2):
        prepare.prepare("iwslt14_deen", tmp_path / "out", source=source, vocab_size=120)
    assert len(calls) == 1  # the second run reuses fairseq_split/
    copy = tmp_path / "copy" / "de-en.tgz"
    copy.parent.mkdir()
    copy.write_bytes(archive.read_bytes())
    prepare.prepare("iwslt14_deen", tmp_path / "out", source=copy, vocab_size=120)
    assert len(calls) == 1  # the same bytes elsewhere: the same split
    # another archive at the same path (its size and name unchanged would not matter): made again, from it
    rewritten(archive, source, lambda name, text: text.replace("Satz Nummer 1-0", "Satz Nummer 9-9"))
    prepare.prepare("iwslt14_deen", tmp_path / "out", source=source, vocab_size=120)
    assert len(calls) == 2
    assert "satz nummer 9-9" in (tmp_path / "out" / "train.src").read_text()


@pytest.mark.parametrize("damage", ["truncated", "not gzip", "a member twice"])
def test_a_damaged_or_ambiguous_archive_is_one_line(archive, tmp_path, capsys, damage):
    broken = tmp_path / "de-en.tgz"
    if damage == "truncated":
        broken.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    elif damage == "not gzip":
        broken.write_bytes(b"<html>404 Not Found</html>\n" * 50)
    else:
        rewritten(archive, broken, extra=[("other/train.tags.de-en.de", "Ein anderer Satz.\n")])
    with pytest.raises(SystemExit) as exit_info:
        prepare.main(["iwslt14_deen", "--source", str(broken), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    expected = {"truncated": "is not a complete tar archive", "not gzip": "is not a complete tar archive",
                "a member twice": "holds train.tags.de-en.de twice (de-en/train.tags.de-en.de and "
                                  "other/train.tags.de-en.de): which one is the release's is ambiguous"}[damage]
    assert expected in err and str(broken) in err


def test_a_last_line_without_newline_and_a_byte_order_mark(tmp_path):
    """The last line used to be dropped (1999 of 2000 pairs, exit 0), and a BOM kept in the prepared text."""
    source = tmp_path / "src"
    source.mkdir()
    for stem in ("train", "val", "test_2016_flickr"):
        (source / f"{stem}.de").write_text("\ufeffEin Hund läuft.\nZwei Katzen schlafen.", encoding="utf-8")
        (source / f"{stem}.en").write_text("A dog runs.\nTwo cats sleep.\n", encoding="utf-8")
    info = prepare.prepare("multi30k_deen", tmp_path / "out", source=source, vocab_size=40)
    assert info["pairs"] == {"train": 2, "valid": 2, "test": 2}
    assert (tmp_path / "out" / "train.src").read_text(encoding="utf-8") == "ein hund läuft.\nzwei katzen schlafen.\n"


@pytest.mark.parametrize("damage", ["truncated", "not gzip"])
def test_a_damaged_gzip_file_is_one_line(tmp_path, capsys, damage):
    source = tmp_path / "src"
    source.mkdir()
    for path in prepare_sample().iterdir():
        if path.suffix in (".de", ".en"):
            data = gzip.compress(path.read_bytes())
            (source / (path.name + ".gz")).write_bytes(data)
    bad = source / "train.en.gz"
    bad.write_bytes(bad.read_bytes()[:200] if damage == "truncated" else b"plain text, not gzip\n")
    with pytest.raises(SystemExit) as exit_info:
        prepare.main(["multi30k_deen", "--source", str(source), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1, err
    assert f"{bad}: not a complete gzip file" in err and err.endswith("; fetch it again\n")


def test_a_vocabulary_too_small_for_the_corpus_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        prepare.main(["multi30k_deen", "--source", str(prepare_sample()), "--out", str(tmp_path), "--vocab-size",
                      "10"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "SentencePiece cannot train a model of 10 pieces on this corpus: Vocabulary size is smaller than " \
           "required_chars" in err and err.endswith("; choose another --vocab-size\n")

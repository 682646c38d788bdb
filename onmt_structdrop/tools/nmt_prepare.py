"""Prepare a translation corpus for the recipes: read it from a local directory or download it, normalise it,
train a joint SentencePiece model, and write what ``onmt_build_vocab``, ``onmt_train`` and ``onmt_translate``
read through OpenNMT-py's own ``sentencepiece`` transform.

    python -m onmt_structdrop.tools.nmt_prepare multi30k_deen --source ../shared/data/multi30k_deen --out data/multi30k_deen
    python -m onmt_structdrop.tools.nmt_prepare iwslt14_deen --source de-en.tgz --out data/iwslt_deen
    python -m onmt_structdrop.tools.nmt_prepare iwslt15_envi --download --out data/iwslt_envi

Output in ``--out``: ``{train,valid,test}.{src,tgt}`` (normalised text, one sentence per line), ``spm.model``
(the joint SentencePiece model the recipes' ``src_subword_model`` and ``tgt_subword_model`` name) with its
``spm.vocab``, ``test.ref`` (the test references sacreBLEU scores against), ``prepare.json`` (what was done, and
the checks of the corpus files against their published line counts and digests). ``--subword bpe`` writes
pre-tokenised BPE text instead (pyonmttok: ``bpe.model``, ``tokenizer.json``), for configs without transforms.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from tqdm import tqdm

from ..textfile import BadDataFile, atomic_file, read_lines, write_text
from . import iwslt14


@dataclass(frozen=True)
class Expected:
    """A corpus file as published: its lines and, where known, its SHA-256 or git blob id."""
    lines: int
    sha256: Optional[str] = None
    git_blob: Optional[str] = None


@dataclass(frozen=True)
class Corpus:
    src: str
    tgt: str
    files: Dict[str, str]  # split -> file stem; the file is f"{stem}.{lang}" (maybe .gz)
    url: Optional[str]  # download location of f"{stem}.{lang}{suffix}" (or of the archive), or None
    suffix: str
    lowercase: bool
    pretokenized: bool  # already tokenised (Moses): split on spaces only
    vocab_size: int  # joint SentencePiece vocabulary
    bpe_merges: int
    archive: bool = False  # the release archive, split by iwslt14.split
    expected: Dict[str, Expected] = field(default_factory=dict)  # file name -> as published


# Line counts and digests of the published files (../shared/data/*/SOURCE.md).
FAIRSEQ_IWSLT14 = {
    "train.de": Expected(160239, git_blob="30660ed508af1be868cfd3f09a0bd7d71b4517c6"),
    "train.en": Expected(160239, git_blob="3b48a76e28ede930fd5e177dce14686147a10ee3"),
    "valid.de": Expected(7283, "3f051579c9d8c7281a6ea8c72ad4ae09dbaa9bb24dfd41166f2c3a3df7cd940a"),
    "valid.en": Expected(7283, "e6d7317a9772cd1ed970910c611e9e7dada1f34439269b44a9d801334bff948d"),
    "test.de": Expected(6750, "e718c783e33160b7d72af8f733756a466e0d0c016eff8ab624c1b0d1d01cbbdf"),
    "test.en": Expected(6750, "4b127beb9050511a3e6209cd837ff36f623a3a423666b32aba6e208b7330cf4c"),
}
STANFORD_IWSLT15 = {
    "train.en": Expected(133317, git_blob="15ead8ee3fb979c06b314594e1d2602d4308c1e5"),
    "train.vi": Expected(133317, git_blob="985cf3b6bb7aeda61cc06f439e3a7e0327470661"),
    "tst2012.en": Expected(1553, "b8fbcd0d4199d41276421d1f7228298df67dd9e2c5c134c2ee8cdf3ec27801e2"),
    "tst2012.vi": Expected(1553, "01004078b3f36b0c46e81b65fc6851230b3c823405c76d1d82ef3b786b512ff0"),
    "tst2013.en": Expected(1268, "3860ce60bc5b85d96cc2d3d580cf1bc9d62440e939c1b964676d3607c4e8f1df"),
    "tst2013.vi": Expected(1268, "29af16842808da2812b8fd4d47fc05d082ba870e60ab7755090ad04b380994cd"),
}

CORPORA = {
    "multi30k_deen": Corpus("de", "en", {"train": "train", "valid": "val", "test": "test_2016_flickr"},
                            "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw", ".gz",
                            lowercase=True, pretokenized=False, vocab_size=8000, bpe_merges=8000),
    "iwslt15_envi": Corpus("en", "vi", {"train": "train", "valid": "tst2012", "test": "tst2013"},
                           "https://nlp.stanford.edu/projects/nmt/data/iwslt15.en-vi", "",
                           lowercase=False, pretokenized=True, vocab_size=10000, bpe_merges=10000,
                           expected=STANFORD_IWSLT15),
    # WIT3's own address (wit3.fbk.eu/archive/2014-01/texts/de/en/de-en.tgz) is gone; fairseq keeps a copy
    "iwslt14_deen": Corpus("de", "en", {"train": "train", "valid": "valid", "test": "test"},
                           "http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz", "",
                           lowercase=True, pretokenized=True, vocab_size=10000, bpe_merges=10000,
                           archive=True, expected=FAIRSEQ_IWSLT14),
}


class DataError(ValueError):
    pass


def normalise(line: str, lowercase: bool) -> str:
    """One sentence with every run of Unicode whitespace (U+00A0 included) turned into one space."""
    line = " ".join(line.split())
    return line.lower() if lowercase else line


def find_file(directory: Path, stem: str, lang: str) -> Path:
    for name in (f"{stem}.{lang}", f"{stem}.{lang}.gz"):
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"missing {stem}.{lang} (or {stem}.{lang}.gz) in {directory}")


def fetch(url: str, target: Path) -> Path:
    """``url`` saved as ``target`` (once: an existing file is kept), with a progress bar."""
    if not target.exists():
        partial = target.with_name(target.name + ".part")
        with tqdm(desc=f"downloading {url}", unit="B", unit_scale=True, leave=False, disable=None) as bar:
            def progress(blocks, block_size, total):
                bar.total = total if total > 0 else None
                bar.update(blocks * block_size - bar.n)
            try:
                urllib.request.urlretrieve(url, partial, reporthook=progress)
            except OSError as err:
                raise DataError(f"cannot download {url} ({err}); fetch it yourself and pass --source") from None
        partial.rename(target)
    return target


def download(corpus: Corpus, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    if corpus.archive:
        return fetch(corpus.url, directory / Path(corpus.url).name)
    for stem in corpus.files.values():
        for lang in (corpus.src, corpus.tgt):
            name = f"{stem}.{lang}{corpus.suffix}"
            fetch(f"{corpus.url}/{name}", directory / name)
    return directory


def split_from_archive(source: Path, out: Path) -> Path:
    """The fairseq split of IWSLT'14 (see :mod:`.iwslt14`) in ``out/fairseq_split``, made from ``source`` once
    (again when its content changes: the split is keyed by its SHA-256); a ``source`` that already holds that
    split (fairseq's ``tmp/`` output) is used as it is."""
    if source.is_dir() and all((source / name).is_file() for name in FAIRSEQ_IWSLT14):
        return source
    split_dir = out / "fairseq_split"
    stamp = split_dir / "made_from.txt"  # the SHA-256 of what the split was made from, then its path
    try:
        made_from = f"{iwslt14.fingerprint(source)} {source.resolve()}"
        if stamp.is_file() and stamp.read_text().split(" ")[0] == made_from.split(" ")[0] \
                and all((split_dir / n).is_file() for n in FAIRSEQ_IWSLT14):
            return split_dir
        stamp.unlink(missing_ok=True)  # a split cut short is never taken for a whole one
        iwslt14.write_split(iwslt14.split(iwslt14.read_members(source)), split_dir)
    except iwslt14.ArchiveError as err:
        raise DataError(str(err)) from None
    except OSError as err:
        raise DataError(f"cannot read {source}: {err.strerror or err}") from None
    write_text(stamp, made_from)
    return split_dir


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def check_files(directory: Path, expected: Dict[str, Expected]) -> Dict[str, str]:
    """Each published file in ``directory`` against its line count and digest: ``{name: verdict}``."""
    verdicts = {}
    for name, want in expected.items():
        path = directory / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        lines = data.count(b"\n")
        if lines != want.lines:
            verdicts[name] = f"DIFFERS: {lines} lines, published {want.lines}"
        elif want.sha256 and hashlib.sha256(data).hexdigest() != want.sha256:
            verdicts[name] = f"DIFFERS: {lines} lines as published, but another SHA-256"
        elif want.git_blob and git_blob_id(data) != want.git_blob:
            verdicts[name] = f"DIFFERS: {lines} lines as published, but another git blob id"
        else:
            verdicts[name] = f"matches: {lines} lines, " + ("SHA-256" if want.sha256 else "git blob id")
    return verdicts


def read_split(corpus: Corpus, directory: Path, split: str) -> Tuple[List[str], List[str]]:
    stem = corpus.files[split]
    sides = []
    for lang in (corpus.src, corpus.tgt):
        path = find_file(directory, stem, lang)
        lines = read_lines(path)
        if not lines:
            raise DataError(f"{path} is empty")
        sides.append([normalise(line, corpus.lowercase) for line in lines])
    if len(sides[0]) != len(sides[1]):
        raise DataError(f"{stem}.{corpus.src} has {len(sides[0])} lines but {stem}.{corpus.tgt} has "
                        f"{len(sides[1])}: the sides must be parallel")
    for i, (s, t) in enumerate(zip(*sides), start=1):
        if not s or not t:
            raise DataError(f"{directory / stem}.{corpus.src if not s else corpus.tgt}:{i}: empty line; "
                            f"remove the pair from both sides")
    return sides[0], sides[1]


def tokenizer_args(corpus: Corpus) -> dict:
    if corpus.pretokenized:
        return {"mode": "space", "joiner_annotate": True}
    return {"mode": "aggressive", "joiner_annotate": True, "segment_numbers": True}


def make_tokenizer(out: Path):
    import pyonmttok
    config = json.loads((out / "tokenizer.json").read_text())
    return pyonmttok.Tokenizer(**config)


def train_sentencepiece(lines: List[str], out: Path, vocab_size: int) -> dict:
    """A joint unigram SentencePiece model of ``lines`` in ``out/spm.model`` (and ``spm.vocab``). No
    normalisation rule: the text is normalised here already, so decoding gives back exactly what was encoded."""
    import sentencepiece as spm
    settings = {"model_type": "unigram", "vocab_size": vocab_size, "character_coverage": 1.0,
                "normalization_rule_name": "identity", "hard_vocab_limit": False,  # a small corpus gets fewer
                "input_sentence_size": 2_000_000, "shuffle_input_sentence": True}
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(out / "spm"), minloglevel=2,
                                       num_threads=4, **settings)
    except RuntimeError as err:  # e.g. fewer pieces than the corpus has characters
        reason = str(err).split("] ", 1)[-1].rstrip(". ")
        raise DataError(f"SentencePiece cannot train a model of {vocab_size} pieces on this corpus: {reason}; "
                        f"choose another --vocab-size") from None
    pieces = spm.SentencePieceProcessor(model_file=str(out / "spm.model")).get_piece_size()
    return {"model": str((out / "spm.model").resolve()), "pieces": pieces, **settings}


def learn_bpe(corpus: Corpus, train, out: Path, merges: int):
    """A joint BPE (pyonmttok) of the training pairs in ``out/bpe.model``, its tokenizer in ``tokenizer.json``:
    ``(encode, info)``, ``encode`` turning a line into BPE tokens."""
    import pyonmttok
    args = tokenizer_args(corpus)
    learner = pyonmttok.BPELearner(tokenizer=pyonmttok.Tokenizer(**args), symbols=merges)
    for side in train:
        for line in side:
            learner.ingest(line)
    tokenizer = learner.learn(str(out / "bpe.model"))
    write_text(out / "tokenizer.json", json.dumps(
        {**args, "bpe_model_path": str((out / "bpe.model").resolve())}, indent=1))
    return (lambda line: " ".join(tokenizer.tokenize(line)[0])), {"tokenizer": args, "bpe_merges": merges}


def write_lines(path: Path, lines, desc: str):
    with atomic_file(path, "w", encoding="utf-8", newline="\n") as f:
        for line in tqdm(lines, desc=desc, unit=" lines", leave=False, disable=None):
            f.write(line + "\n")


def prepare(name: str, out: Path, source: Optional[Path] = None, max_train: Optional[int] = None,
            subword: str = "sentencepiece", vocab_size: Optional[int] = None,
            bpe_merges: Optional[int] = None) -> dict:
    corpus = CORPORA[name]
    if subword not in ("sentencepiece", "bpe"):
        raise DataError(f"unknown subword {subword!r}: use sentencepiece or bpe")
    out.mkdir(parents=True, exist_ok=True)
    source = source if source is not None else download(corpus, out / "raw")
    if not source.exists():
        raise DataError(f"source {source} does not exist")
    directory = split_from_archive(source, out) if corpus.archive else source
    if not directory.is_dir():
        raise DataError(f"source {directory} is not a directory")
    checks = check_files(directory, corpus.expected)
    for file_name, verdict in checks.items():
        print(f"{file_name}: {verdict}", file=sys.stderr)
    splits = {split: read_split(corpus, directory, split) for split in corpus.files}
    if max_train:
        splits["train"] = tuple(side[:max_train] for side in splits["train"])

    info = {"corpus": name, "source": str(source), "lowercase": corpus.lowercase, "subword": subword,
            "checks": checks}
    if subword == "sentencepiece":  # the text as it is: OpenNMT-py's transform applies the model
        info["sentencepiece"] = train_sentencepiece([*splits["train"][0], *splits["train"][1]], out,
                                                    vocab_size or corpus.vocab_size)
        encode = None
    else:
        encode, bpe = learn_bpe(corpus, splits["train"], out, bpe_merges or corpus.bpe_merges)
        info.update(bpe)
    counts = {}
    for split, (src, tgt) in splits.items():
        for ext, side in (("src", src), ("tgt", tgt)):
            write_lines(out / f"{split}.{ext}", side if encode is None else map(encode, side), f"{split}.{ext}")
        counts[split] = len(src)
    write_lines(out / "test.ref", splits["test"][1], "test.ref")
    info["pairs"] = counts
    write_text(out / "prepare.json", json.dumps(info, indent=1))
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", choices=sorted(CORPORA))
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--source", type=Path, help="directory holding the corpus files (iwslt14_deen: the "
                                                   "de-en.tgz archive, its folder, or fairseq's split)")
    where.add_argument("--download", action="store_true", help="download from the canonical source")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-train", type=int, default=None, help="keep only the first N training pairs")
    parser.add_argument("--subword", choices=("sentencepiece", "bpe"), default="sentencepiece",
                        help="sentencepiece (default): plain text and spm.model for OpenNMT-py's transform; "
                             "bpe: pre-tokenised BPE text (pyonmttok)")
    parser.add_argument("--vocab-size", type=int, default=None,
                        help="SentencePiece vocabulary (default: the corpus's, see CORPORA)")
    parser.add_argument("--bpe-merges", type=int, default=None)
    args = parser.parse_args(argv)
    for option in ("max_train", "vocab_size", "bpe_merges"):
        value = getattr(args, option)
        if value is not None and value < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1, got {value}")
    try:
        info = prepare(args.corpus, args.out, None if args.download else args.source, args.max_train,
                       args.subword, args.vocab_size, args.bpe_merges)
    except (DataError, BadDataFile) as err:  # one line, exit 2
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(json.dumps(info))


if __name__ == "__main__":
    main()

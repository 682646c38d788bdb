"""Prepare a translation corpus for the recipes: read it from a local directory or download it, normalise it,
tokenise it and learn a joint BPE (pyonmttok, OpenNMT's tokenizer), and write what ``onmt_build_vocab``,
``onmt_train`` and ``onmt_translate`` read.

    python -m onmt_structdrop.tools.nmt_prepare multi30k_deen --source ../shared/data/multi30k_deen --out data/multi30k_deen
    python -m onmt_structdrop.tools.nmt_prepare iwslt15_envi --download --out data/iwslt15_envi

Output in ``--out``: ``{train,valid,test}.{src,tgt}`` (tokenised, BPE), ``test.ref`` (the test references,
normalised but not tokenised, for sacreBLEU), ``bpe.model`` and ``tokenizer.json`` (to detokenise
translations), ``prepare.json`` (what was done).
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from tqdm import tqdm

from ..textfile import NotUTF8, read_text


@dataclass(frozen=True)
class Corpus:
    src: str
    tgt: str
    files: Dict[str, str]  # split -> file stem; the file is f"{stem}.{lang}" (maybe .gz)
    url: Optional[str]  # download location of f"{stem}.{lang}{suffix}", or None
    suffix: str
    lowercase: bool
    pretokenized: bool  # already tokenised (Moses): split on spaces only
    bpe_merges: int
    note: str = ""


CORPORA = {
    "multi30k_deen": Corpus("de", "en", {"train": "train", "valid": "val", "test": "test_2016_flickr"},
                            "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw", ".gz",
                            lowercase=True, pretokenized=False, bpe_merges=8000),
    "iwslt15_envi": Corpus("en", "vi", {"train": "train", "valid": "tst2012", "test": "tst2013"},
                           "https://nlp.stanford.edu/projects/nmt/data/iwslt15.en-vi", "",
                           lowercase=False, pretokenized=True, bpe_merges=10000),
    "iwslt14_deen": Corpus("de", "en", {"train": "train", "valid": "valid", "test": "test"}, None, "",
                           lowercase=True, pretokenized=True, bpe_merges=10000,
                           note="the fairseq split (examples/translation/prepare-iwslt14.sh, its tmp/ output: "
                                "train/valid/test.{de,en}, tokenised and lowercased)"),
}


class DataError(ValueError):
    pass


def normalise(line: str, lowercase: bool) -> str:
    """One sentence with every run of Unicode whitespace (U+00A0 included) turned into one space."""
    line = " ".join(line.split())
    return line.lower() if lowercase else line


def read_lines(path: Path) -> List[str]:
    return read_text(path).split("\n")[:-1] if path.stat().st_size else []


def find_file(directory: Path, stem: str, lang: str) -> Path:
    for name in (f"{stem}.{lang}", f"{stem}.{lang}.gz"):
        if (directory / name).is_file():
            return directory / name
    raise DataError(f"missing {stem}.{lang} (or {stem}.{lang}.gz) in {directory}")


def download(corpus: Corpus, name: str, directory: Path) -> Path:
    if corpus.url is None:
        raise DataError(f"{name} cannot be downloaded directly: prepare {corpus.note} and pass --source DIR")
    directory.mkdir(parents=True, exist_ok=True)
    for split, stem in corpus.files.items():
        for lang in (corpus.src, corpus.tgt):
            target = directory / f"{stem}.{lang}{corpus.suffix}"
            if not target.exists():
                url = f"{corpus.url}/{target.name}"
                print(f"downloading {url}", file=sys.stderr)
                urllib.request.urlretrieve(url, target)
    return directory


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
            raise DataError(f"{stem}: line {i} is empty on the {corpus.src if not s else corpus.tgt} side")
    return sides[0], sides[1]


def tokenizer_args(corpus: Corpus) -> dict:
    if corpus.pretokenized:
        return {"mode": "space", "joiner_annotate": True}
    return {"mode": "aggressive", "joiner_annotate": True, "segment_numbers": True}


def make_tokenizer(out: Path):
    import pyonmttok
    config = json.loads((out / "tokenizer.json").read_text())
    return pyonmttok.Tokenizer(**config)


def prepare(name: str, out: Path, source: Optional[Path] = None, max_train: Optional[int] = None,
            bpe_merges: Optional[int] = None) -> dict:
    import pyonmttok
    corpus = CORPORA[name]
    directory = source if source is not None else download(corpus, name, out / "raw")
    if not directory.is_dir():
        raise DataError(f"source directory {directory} does not exist")
    splits = {split: read_split(corpus, directory, split) for split in corpus.files}
    if max_train:
        splits["train"] = tuple(side[:max_train] for side in splits["train"])
    out.mkdir(parents=True, exist_ok=True)

    args = tokenizer_args(corpus)
    merges = bpe_merges or corpus.bpe_merges
    learner = pyonmttok.BPELearner(tokenizer=pyonmttok.Tokenizer(**args), symbols=merges)
    for side in splits["train"]:
        for line in side:
            learner.ingest(line)
    tokenizer = learner.learn(str(out / "bpe.model"))
    (out / "tokenizer.json").write_text(json.dumps({**args, "bpe_model_path": str((out / "bpe.model").resolve())},
                                                   indent=1))
    counts = {}
    for split, (src, tgt) in splits.items():
        for ext, side in (("src", src), ("tgt", tgt)):
            with open(out / f"{split}.{ext}", "w", encoding="utf-8") as f:
                for line in tqdm(side, desc=f"{split}.{ext}", unit=" lines", leave=False):
                    f.write(" ".join(tokenizer.tokenize(line)[0]) + "\n")
        counts[split] = len(src)
    (out / "test.ref").write_text("".join(line + "\n" for line in splits["test"][1]), encoding="utf-8")
    info = {"corpus": name, "source": str(directory), "pairs": counts, "lowercase": corpus.lowercase,
            "tokenizer": args, "bpe_merges": merges}
    (out / "prepare.json").write_text(json.dumps(info, indent=1))
    return info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", choices=sorted(CORPORA))
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--source", type=Path, help="directory holding the corpus files")
    where.add_argument("--download", action="store_true", help="download from the canonical source")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-train", type=int, default=None, help="keep only the first N training pairs")
    parser.add_argument("--bpe-merges", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        info = prepare(args.corpus, args.out, None if args.download else args.source, args.max_train,
                       args.bpe_merges)
    except (DataError, NotUTF8) as err:  # one line, exit 2
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    print(json.dumps(info))


if __name__ == "__main__":
    main()

"""IWSLT'14 De-En from the release archive of the 2014 evaluation campaign (``de-en.tgz``), split as fairseq's
``examples/translation/prepare-iwslt14.sh`` splits it, in Python (sacremoses stands in for Moses' perl scripts).

What the script does, step by step, and so what this module does:
- train: ``train.tags.de-en.{de,en}`` without the lines holding ``<url>``, ``<talkid>`` or ``<keywords>``, the
  ``<title>``/``<description>`` tags removed (their text kept), Moses-tokenised (not aggressive, escaped);
  ``clean-corpus-n.perl -ratio 1.5 ... 1 175`` on the pairs; lowercased;
- valid = every 23rd of those lines, train = the other 22 of every 23;
- test = the ``<seg>`` text of dev2010, TEDX dev2012, tst2010, tst2011 and tst2012 (in that order), with U+2019
  made an apostrophe, tokenised and lowercased.
"""
from __future__ import annotations

import hashlib
import re
import tarfile
import zlib
from pathlib import Path
from typing import Dict, List, Tuple

from tqdm import tqdm

from ..textfile import write_text

LANGS = ("de", "en")
TEST_SETS = ("IWSLT14.TED.dev2010", "IWSLT14.TEDX.dev2012", "IWSLT14.TED.tst2010", "IWSLT14.TED.tst2011",
             "IWSLT14.TED.tst2012")
DROPPED_HEADERS = ("<url>", "<talkid>", "<keywords>")
_TITLE_TAGS = re.compile(r"</?(?:title|description)>")
_SEG_OPEN = re.compile(r'<seg id="[0-9]*">\s*')
_SEG_CLOSE = re.compile(r"\s*</seg>\s*")
MAX_WORD_CHARS = 1000  # clean-corpus-n.perl's --max-word-length default


class ArchiveError(ValueError):
    pass


def member_names() -> List[str]:
    """The files of the archive the split reads (below its ``de-en/`` folder)."""
    return ([f"train.tags.de-en.{lang}" for lang in LANGS]
            + [f"{name}.de-en.{lang}.xml" for name in TEST_SETS for lang in LANGS])


def read_members(source: Path) -> Dict[str, str]:
    """The text of each of :func:`member_names` from ``source``: the ``de-en.tgz`` archive, a folder holding it,
    or the folder it extracts to (``de-en/``) or one holding that."""
    if source.is_dir():
        if (source / "de-en.tgz").is_file():
            return read_members(source / "de-en.tgz")
        folder = source / "de-en" if (source / "de-en").is_dir() else source
        missing = [name for name in member_names() if not (folder / name).is_file()]
        if missing:
            raise ArchiveError(f"{folder} lacks {', '.join(missing)}: pass IWSLT 2014's de-en.tgz, a folder "
                               f"holding it, or the de-en/ folder it extracts to")
        return {name: _decode(folder / name, (folder / name).read_bytes()) for name in member_names()}
    try:
        with tarfile.open(source, "r:*") as archive:
            found = {}
            for member in archive.getmembers():
                name = Path(member.name).name
                if member.isfile() and name in member_names():
                    if name in found:
                        raise ArchiveError(f"{source} holds {name} twice ({found[name].name} and {member.name}): "
                                           f"which one is the release's is ambiguous; pass IWSLT 2014's de-en.tgz "
                                           f"as released")
                    found[name] = member
            missing = [name for name in member_names() if name not in found]
            if missing:
                raise ArchiveError(f"{source} lacks {', '.join(missing)}: is it IWSLT 2014's de-en.tgz?")
            return {name: _decode(f"{source}:{found[name].name}", archive.extractfile(found[name]).read())
                    for name in member_names()}
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:  # not a tar, not gzip, or cut short
        reason = str(err).splitlines()[0].rstrip(":") if str(err) else type(err).__name__
        raise ArchiveError(f"{source} is not a complete tar archive ({reason}); download de-en.tgz again") from None


def fingerprint(source: Path) -> str:
    """SHA-256 of what :func:`read_members` reads from ``source`` (the archive's bytes, or the member files'),
    so that a split made from it is reused only for the same content."""
    digest = hashlib.sha256()
    if source.is_dir() and not (source / "de-en.tgz").is_file():
        folder = source / "de-en" if (source / "de-en").is_dir() else source
        files = [folder / name for name in member_names()]
    else:
        files = [source / "de-en.tgz" if source.is_dir() else source]
    for path in files:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _decode(where, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ArchiveError(f"{where}:{line}: not UTF-8 (byte 0x{data[err.start]:02x}); the archive is damaged: "
                           f"download it again") from None


def lowercase(line: str) -> str:
    """Perl's ``lc`` (Moses' lowercase.perl): character by character, so a final sigma stays a plain sigma."""
    return line.lower() if "\u03a3" not in line else "".join(ch.lower() for ch in line)


class Tokenizer:
    """Moses' tokenizer.perl as fairseq calls it (``-l LANG``: not aggressive, escaping); a line holding only
    whitespace passes through untouched, as in the perl script."""

    def __init__(self, lang: str):
        from sacremoses import MosesTokenizer
        self._moses = MosesTokenizer(lang=lang)

    def __call__(self, line: str) -> str:
        if not line.strip():
            return line
        return self._moses.tokenize(line, return_str=True, escape=True, aggressive_dash_splits=False)


def clean(src: List[str], tgt: List[str], ratio: float = 1.5, shortest: int = 1,
          longest: int = 175) -> Tuple[List[str], List[str]]:
    """clean-corpus-n.perl: pairs with whitespace runs made single spaces, without the pairs where a side is
    empty, has fewer than ``shortest`` or more than ``longest`` words, a word of more than 1,000 characters, or
    more than ``ratio`` times the other side's words."""
    kept_src, kept_tgt = [], []
    factored = "|" in src[0] or "|" in tgt[0] if src else False
    for f, e in zip(src, tgt):
        if not factored:
            f, e = f.replace("|", ""), e.replace("|", "")
        f, e = " ".join(f.split()), " ".join(e.split())
        if not f or not e:
            continue
        fc, ec = f.count(" ") + 1, e.count(" ") + 1
        if not (shortest <= fc <= longest and shortest <= ec <= longest):
            continue
        if ec / fc > ratio or fc / ec > ratio:
            continue
        if any(len(word) > MAX_WORD_CHARS for word in f.split(" ") + e.split(" ")):
            continue
        kept_src.append(f)
        kept_tgt.append(e)
    return kept_src, kept_tgt


def _lines(text: str) -> List[str]:
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def train_lines(text: str, tokenize: Tokenizer, desc: str) -> List[str]:
    lines = [_TITLE_TAGS.sub("", line) for line in _lines(text)
             if not any(header in line for header in DROPPED_HEADERS)]
    return [tokenize(line) for line in tqdm(lines, desc=desc, unit=" lines", leave=False, disable=None)]


def test_lines(xml: str, tokenize: Tokenizer) -> List[str]:
    segments = [_SEG_CLOSE.sub("", _SEG_OPEN.sub("", line)).replace("\u2019", "'")
                for line in _lines(xml) if "<seg id" in line]
    return [lowercase(tokenize(line)) for line in segments]


def split(members: Dict[str, str]) -> Dict[str, Tuple[List[str], List[str]]]:
    """``{"train"|"valid"|"test": (de lines, en lines)}``, the fairseq split of the archive's text."""
    tokenizers = {lang: Tokenizer(lang) for lang in LANGS}
    tokenized = {}
    for lang in LANGS:
        name = f"train.tags.de-en.{lang}"
        tokenized[lang] = train_lines(members[name], tokenizers[lang], f"tokenising {name}")
    if len(tokenized["de"]) != len(tokenized["en"]):
        raise ArchiveError(f"train.tags.de-en.de has {len(tokenized['de'])} sentence lines but .en has "
                           f"{len(tokenized['en'])}: the archive is damaged; download it again")
    de, en = (list(map(lowercase, side)) for side in clean(tokenized["de"], tokenized["en"]))
    splits = {"train": ([], []), "valid": ([], [])}
    for number, pair in enumerate(zip(de, en), start=1):
        target = splits["valid" if number % 23 == 0 else "train"]
        target[0].append(pair[0])
        target[1].append(pair[1])
    test = {lang: [line for name in TEST_SETS
                   for line in test_lines(members[f"{name}.de-en.{lang}.xml"], tokenizers[lang])]
            for lang in LANGS}
    if len(test["de"]) != len(test["en"]):
        raise ArchiveError(f"the test sets hold {len(test['de'])} German and {len(test['en'])} English segments: "
                           f"the archive is damaged; download it again")
    splits["test"] = (test["de"], test["en"])
    return splits


def write_split(splits, directory: Path) -> Dict[str, Path]:
    """Write the split as fairseq names it (``{train,valid,test}.{de,en}``); the paths by file name."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, sides in splits.items():
        for lang, lines in zip(LANGS, sides):
            path = directory / f"{name}.{lang}"
            write_text(path, "".join(line + "\n" for line in lines))
            paths[path.name] = path
    return paths

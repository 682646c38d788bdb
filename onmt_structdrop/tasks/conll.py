"""CoNLL-2003 files: one token per line (``word POS chunk NER``), blank lines between sentences, ``-DOCSTART-``
lines between documents. The original English files tag entities in IOB1 (``I-`` opens an entity unless it
follows one of the same type); :func:`iob1_to_iob2` gives every entity an explicit ``B-``."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List

from ..textfile import numbered_lines

TAG = re.compile(r"^(O|[BI]-[^\s-][^\s]*)$")


@dataclass
class Sentence:
    words: List[str]
    tags: List[str]


def read_conll(path: Path, tag_column: int = -1) -> List[Sentence]:
    """Sentences of a CoNLL file, tags as written. Every token line must have as many columns as the first one
    and a tag of the IOB form; anything else is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CoNLL file not found: {path}")
    sentences, words, tags, columns = [], [], [], None

    def close():
        if words:
            sentences.append(Sentence(list(words), list(tags)))
            words.clear()
            tags.clear()

    for number, line in numbered_lines(path):
        fields = line.split()
        if not fields:
            close()
            continue
        if fields[0] == "-DOCSTART-":  # only the first column: eng.testb writes "-DOCSTART- -X- -X- O"
            close()
            continue
        if columns is None:
            columns = len(fields)
            if columns < 2:
                raise ValueError(f"{path}:{number}: expected a word and a tag, got {line.strip()!r}")
        if len(fields) != columns:
            raise ValueError(f"{path}:{number}: expected {columns} columns like the first token line, got "
                             f"{len(fields)}: {line.rstrip()!r}")
        tag = fields[tag_column]
        if not TAG.match(tag):
            raise ValueError(f"{path}:{number}: {tag!r} is not an IOB tag (O, B-TYPE or I-TYPE): "
                             f"{line.rstrip()!r}")
        words.append(fields[0])
        tags.append(tag)
    close()
    if not sentences:
        raise ValueError(f"{path} holds no sentences")
    return sentences


def iob1_to_iob2(tags: List[str]) -> List[str]:
    """``I-X`` that opens an entity (first token, after ``O`` or after another type) becomes ``B-X``."""
    out, previous = [], "O"
    for tag in tags:
        if tag.startswith("I-") and (previous == "O" or previous[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        previous = tag
    return out

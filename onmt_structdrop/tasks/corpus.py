"""Word-level language-modelling corpora in the PTB format: whitespace-separated words, one sentence per line,
an ``<eos>`` after each line."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import torch

from ..textfile import numbered_lines

EOS, UNK = "<eos>", "<unk>"
SPLITS = ("train", "valid", "test")


def corpus_files(data: Path, prefix="ptb") -> Dict[str, Path]:
    """``{split: path}`` of ``{prefix}.{split}.txt`` in ``data``; a missing directory or file is an error."""
    if not Path(data).is_dir():
        raise FileNotFoundError(f"corpus directory not found: {data}")
    files = {split: Path(data) / f"{prefix}.{split}.txt" for split in SPLITS}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"corpus file(s) not found: {', '.join(missing)}")
    return files


def read_words(path: Path) -> List[str]:
    words = []
    for _, line in numbered_lines(path):
        words.extend(line.split())
        words.append(EOS)
    if len(words) == words.count(EOS):
        raise ValueError(f"{path} is empty: no words")
    return words


class Vocabulary:
    """Words of the training split in order of first appearance; others map to ``<unk>`` if it is a word of
    the training split (as in PTB), and are an error otherwise."""

    def __init__(self, words):
        self.index = {}
        for w in words:
            self.index.setdefault(w, len(self.index))
        self.words = list(self.index)

    def __len__(self):
        return len(self.words)

    def encode(self, words, source):
        unk = self.index.get(UNK)
        ids = []
        for position, w in enumerate(words):
            i = self.index.get(w, unk)
            if i is None:
                raise ValueError(f"{source}: word {w!r} (token {position}) is not in the training vocabulary and "
                                 f"the vocabulary has no {UNK}")
            ids.append(i)
        return torch.tensor(ids, dtype=torch.long)


def load_corpus(data: Path, prefix="ptb"):
    """``(vocabulary, {split: token ids})``."""
    files = corpus_files(data, prefix)
    words = {split: read_words(path) for split, path in files.items()}
    vocab = Vocabulary(words["train"])
    return vocab, {split: vocab.encode(w, files[split]) for split, w in words.items()}


def batchify(ids, batch):
    """``[n, batch]`` time-major columns of consecutive text (the tail that does not fill a row is dropped)."""
    n = ids.numel() // batch
    return ids[: n * batch].view(batch, n).t().contiguous()

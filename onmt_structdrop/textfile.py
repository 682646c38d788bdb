"""Reading data files line by line as UTF-8 (gzip-compressed when they end in ``.gz``), with an error that names
the file, line and byte when a line is not UTF-8 (Python's own names only a byte offset into a buffer)."""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Iterator, Tuple


class NotUTF8(ValueError):
    """A line of a data file that is not UTF-8 (its message names the file, line and byte)."""


def numbered_lines(path: Path) -> Iterator[Tuple[int, str]]:
    """``(number, line)`` of each line of ``path`` from 1, the line decoded as UTF-8 (its newline kept)."""
    with (gzip.open if Path(path).suffix == ".gz" else open)(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise NotUTF8(f"{path}:{number}: not UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1}); "
                              f"convert the file to UTF-8, e.g. iconv -f latin1 -t utf-8 {path}") from None


def read_text(path: Path) -> str:
    """The whole of ``path`` as UTF-8 text; see :func:`numbered_lines` for the error."""
    return "".join(line for _, line in numbered_lines(path))

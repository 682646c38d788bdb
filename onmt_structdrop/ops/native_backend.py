"""The ``native`` backend: the seam's operations in C++ on the CPU (the compiled extension
``onmt_structdrop._native``). Until that extension exists this backend reports itself unavailable and the
``torch`` backend serves."""
from __future__ import annotations

import functools
import importlib

NAME = "native"


@functools.lru_cache(maxsize=None)
def _extension():
    try:
        return importlib.import_module("onmt_structdrop._native"), ""
    except ImportError as err:
        return None, f"the C++ extension onmt_structdrop._native is not built ({err})"


def available():
    extension, reason = _extension()
    return extension is not None, reason


def declines(op, device, dtype, plan=None):
    return "the native engine implements no operation yet"

"""Files the package reads at run time (CUDA sources, the OpenNMT-py patch set, the demo's sample corpus).

In a source checkout (and an editable install) they are the checkout's top-level folders; an installed package
carries copies under ``onmt_structdrop/_data`` (``setup.py`` puts them there).
"""
from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
SHIPPED = ("cuda", "patches", "recipes/sample_multi30k_deen")


def data_path(name):
    """The path of ``name`` (one of ``SHIPPED``, or a file below one)."""
    for base in (PACKAGE / "_data", PACKAGE.parent):
        path = base / name
        if path.exists():
            return path
    raise FileNotFoundError(f"{name} is missing from the onmt_structdrop installation ({PACKAGE}); reinstall "
                            f"the package (pip install .)")

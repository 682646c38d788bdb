"""The patch set in ``patches/opennmt-3.5.1`` and its state on the installed OpenNMT-py (applied by the command
``onmt-structdrop-patch apply|check|revert``, :mod:`onmt_structdrop.tools.patch_onmt`).

The patches are unified diffs. Each hunk must match the installed file exactly, so a file is either original
(every hunk's old side matches), patched (every new side matches), or something else, which is refused: the
command never writes a file it does not recognise. Every file is checked before any is written.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from ..resources import data_path
from ..textfile import write_text

ONMT_VERSION = "3.5.1"
PATCH_DIR = data_path("patches") / f"opennmt-{ONMT_VERSION}"
APPLY_HINT = "run `onmt-structdrop-patch apply` (make setup does)"


class PatchError(RuntimeError):
    pass


@dataclass
class Hunk:
    old_start: int  # 1-based, as in the diff header
    old: List[str]
    new: List[str]


@dataclass
class FilePatch:
    path: str  # relative to site-packages, e.g. onmt/opts.py
    hunks: List[Hunk] = field(default_factory=list)
    created: bool = False  # the diff creates the file


_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+\d+(?:,(\d+))? @@")


def parse_patch(text: str, name: str = "<patch>") -> List[FilePatch]:
    """The file patches of a unified diff (text before the first ``---`` line is a description)."""
    files: List[FilePatch] = []
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        if not lines[i].startswith("--- "):
            i += 1
            continue
        if i + 1 >= len(lines) or not lines[i + 1].startswith("+++ b/"):
            raise PatchError(f"{name}:{i + 2}: expected '+++ b/<path>' after '---'")
        fp = FilePatch(lines[i + 1][6:].strip(), created=lines[i].startswith("--- /dev/null"))
        i += 2
        while i < len(lines) and lines[i].startswith("@@"):
            m = _HUNK.match(lines[i])
            if not m:
                raise PatchError(f"{name}:{i + 1}: malformed hunk header {lines[i].strip()!r}")
            hunk = Hunk(int(m.group(1)), [], [])
            old_count, new_count = (int(c) if c is not None else 1 for c in m.group(2, 3))
            i += 1
            while len(hunk.old) < old_count or len(hunk.new) < new_count:
                if i >= len(lines) or lines[i][:1] not in (" ", "-", "+"):
                    raise PatchError(f"{name}:{i + 1}: hunk shorter than its header says")
                tag, body = lines[i][0], lines[i][1:]
                if tag in " -":
                    hunk.old.append(body)
                if tag in " +":
                    hunk.new.append(body)
                i += 1
            fp.hunks.append(hunk)
        files.append(fp)
    if not files:
        raise PatchError(f"{name}: no file patches found")
    return files


def _apply_hunks(lines: List[str], hunks: List[Hunk], reverse: bool) -> Optional[List[str]]:
    """``lines`` with every hunk applied (undone when ``reverse``), or None if a hunk does not match exactly."""
    out, pos, shift = [], 0, 0
    for hunk in hunks:
        old, new = (hunk.new, hunk.old) if reverse else (hunk.old, hunk.new)
        start = max(hunk.old_start - 1, 0) + (shift if reverse else 0)
        if lines[start:start + len(old)] != old or start < pos:
            return None
        out += lines[pos:start] + new
        pos = start + len(old)
        shift += len(hunk.new) - len(hunk.old)
    return out + lines[pos:]


def onmt_root() -> Path:
    """The installed ``onmt`` package directory (found without importing it), after checking its version."""
    try:
        version = importlib.metadata.version("OpenNMT-py")
    except importlib.metadata.PackageNotFoundError:
        raise PatchError("OpenNMT-py is not installed (pip install --no-deps OpenNMT-py==3.5.1)") from None
    if version != ONMT_VERSION:
        raise PatchError(f"the patch set is for OpenNMT-py {ONMT_VERSION}, but {version} is installed; "
                         f"install OpenNMT-py=={ONMT_VERSION} (pip install --no-deps)")
    spec = importlib.util.find_spec("onmt")
    if spec is None or not spec.submodule_search_locations:
        raise PatchError("OpenNMT-py's package directory 'onmt' was not found")
    return Path(list(spec.submodule_search_locations)[0])


def load_patches(patch_dir: Path = PATCH_DIR) -> List[FilePatch]:
    paths = sorted(patch_dir.glob("*.patch"))
    if not paths:
        raise PatchError(f"no patches in {patch_dir}")
    return [fp for p in paths for fp in parse_patch(p.read_text(encoding="utf-8"), p.name)]


def _read(path: Path) -> Optional[List[str]]:
    return path.read_text(encoding="utf-8").splitlines(keepends=True) if path.exists() else None


def file_state(fp: FilePatch, root: Path) -> str:
    """``original``, ``patched`` or ``modified`` (neither: another version, or edited by hand)."""
    lines = _read(root.parent / fp.path)
    if fp.created:
        if lines is None:
            return "original"
        return "patched" if lines == fp.hunks[0].new else "modified"
    if lines is None:
        return "modified"
    # patched first: a hunk that only appends still finds its context in the patched file
    if _apply_hunks(lines, fp.hunks, reverse=True) is not None:
        return "patched"
    return "original" if _apply_hunks(lines, fp.hunks, reverse=False) is not None else "modified"


def states(root: Optional[Path] = None, patch_dir: Path = PATCH_DIR):
    root = root or onmt_root()
    return root, [(fp, file_state(fp, root)) for fp in load_patches(patch_dir)]


def _refuse_modified(found):
    bad = [fp.path for fp, state in found if state == "modified"]
    if bad:
        raise PatchError(f"these files match neither OpenNMT-py {ONMT_VERSION} nor its patched version, so nothing "
                         f"was changed: {', '.join(bad)} (reinstall with pip install --force-reinstall --no-deps "
                         f"OpenNMT-py=={ONMT_VERSION})")


def apply(root: Optional[Path] = None, patch_dir: Path = PATCH_DIR, reverse: bool = False) -> List[str]:
    """Apply (or revert) every patch; files already in the target state are left alone. Returns changed paths."""
    root, found = states(root, patch_dir)
    _refuse_modified(found)
    todo = "original" if not reverse else "patched"
    changed = []
    for fp, state in found:
        if state != todo:
            continue
        target = root.parent / fp.path
        if fp.created:
            if reverse:
                target.unlink()
            else:
                write_text(target, "".join(fp.hunks[0].new))
        else:
            write_text(target, "".join(_apply_hunks(_read(target), fp.hunks, reverse)))
        changed.append(fp.path)
    return changed


def is_applied(root: Optional[Path] = None) -> bool:
    return all(state == "patched" for _, state in states(root)[1])

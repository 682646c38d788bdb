"""The patch command on a copy of the installed OpenNMT-py: apply, check, revert, idempotence, refusals."""
import importlib.metadata
import shutil

import pytest

from onmt_structdrop import opennmt as plugin
from onmt_structdrop.opennmt import patches as patching
from onmt_structdrop.tools.patch_onmt import main as patch_command


@pytest.fixture
def onmt_copy(tmp_path):
    """A copy of the installed (patched) files the patch set touches, under tmp_path/onmt."""
    installed = patching.onmt_root()
    for fp in patching.load_patches():
        source = installed.parent / fp.path
        if source.exists():
            (tmp_path / fp.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, tmp_path / fp.path)
    return tmp_path / "onmt"


def contents(root):
    return {p.relative_to(root): p.read_text() for p in sorted(root.rglob("*.py"))}


def test_installed_opennmt_is_patched():
    assert patching.is_applied()
    assert patch_command(["check"]) == 0


def test_revert_apply_round_trip_and_idempotence(onmt_copy):
    patched = contents(onmt_copy)
    reverted = patching.apply(onmt_copy, reverse=True)
    assert "onmt/opts.py" in reverted and not (onmt_copy / "plugins.py").exists()
    assert all(state == "original" for _, state in patching.states(onmt_copy)[1])
    assert patching.apply(onmt_copy, reverse=True) == []  # nothing left to revert
    assert len(patching.apply(onmt_copy)) == len(reverted)
    assert contents(onmt_copy) == patched
    assert patching.apply(onmt_copy) == []  # a second apply changes nothing


def test_a_file_that_matches_neither_version_is_refused_and_nothing_is_written(onmt_copy):
    patching.apply(onmt_copy, reverse=True)
    before = contents(onmt_copy)
    (onmt_copy / "opts.py").write_text("def model_opts(parser):\n    pass\n")
    with pytest.raises(patching.PatchError, match="match neither OpenNMT-py 3.5.1.*onmt/opts.py"):
        patching.apply(onmt_copy)
    after = contents(onmt_copy)
    assert {k: v for k, v in after.items() if k.name != "opts.py"} == {
        k: v for k, v in before.items() if k.name != "opts.py"}


def test_another_opennmt_version_is_refused(monkeypatch):
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "3.4.3")
    with pytest.raises(patching.PatchError, match="for OpenNMT-py 3.5.1, but 3.4.3 is installed"):
        patching.onmt_root()
    assert patch_command(["apply"]) == 2


def test_unpatched_opennmt_says_how_to_patch(monkeypatch):
    monkeypatch.setattr(patching, "is_applied", lambda root=None: False)
    with pytest.raises(RuntimeError, match="onmt-structdrop-patch apply"):
        plugin.require_patched_onmt()


def test_malformed_patches_are_reported():
    with pytest.raises(patching.PatchError, match="x.patch: no file patches"):
        patching.parse_patch("just text\n", "x.patch")
    bad = "--- a/onmt/x.py\n+++ b/onmt/x.py\n@@ -1,3 +1,3 @@\n a\n-b\n"
    with pytest.raises(patching.PatchError, match="hunk shorter than its header says"):
        patching.parse_patch(bad, "y.patch")

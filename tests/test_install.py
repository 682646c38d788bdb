"""A non-editable ``pip install .`` into a fresh virtual environment works: it builds the native engine, the layer
trains, the patch command finds its patches, the OpenNMT-py plugin registers, and the files the package reads
ship inside it."""
import os
import shutil
import site
import subprocess
import sys
import textwrap
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]

CHECK = textwrap.dedent("""
    import os, sys
    import torch
    import onmt_structdrop
    from onmt_structdrop import StructDropLSTM
    from onmt_structdrop.resources import data_path
    assert os.path.realpath(onmt_structdrop.__file__).startswith(os.path.realpath(sys.prefix)), onmt_structdrop.__file__
    model = StructDropLSTM(5, 6, 2, dropout=0.5, recurrent_dropout=0.5, input_dropout=0.3, bidirectional=True)
    y, (h, c) = model(torch.randn(4, 3, 5))
    (y.sum() + h.sum()).backward()
    assert all(p.grad is not None for p in model.parameters())
    for name in ("cuda/compact_matmul.cu", "patches/opennmt-3.5.1/01-plugins.patch",
                 "recipes/sample_multi30k_deen/train.de"):
        assert str(data_path(name)).startswith(os.path.join(os.path.dirname(onmt_structdrop.__file__), "_data")), name
    from onmt_structdrop import ops
    assert ops.availability("native")[0], ops.availability("native")[1]  # the install built the C++ engine
    import onmt  # loads the plugins found through the entry points
    from onmt.encoders import str2enc
    from onmt.decoders import str2dec
    assert "sd_brnn" in str2enc and "sd_ifrnn" in str2dec
    print("ok")
""")


def test_non_editable_install_into_a_fresh_environment(tmp_path):
    env_dir = tmp_path / "venv"
    # no pip of its own: this environment's pip and setuptools (appended below) install into it
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(env_dir)],
                   check=True)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # torch, OpenNMT-py and the rest come from this environment (appended after the fresh one's own packages);
    # nothing is downloaded
    Path(purelib, "project_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    source = tmp_path / "src"  # a copy of the tree: no build/ left over from earlier builds can leak in
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "build", "runs", "data", "*.egg-info",
                                                                "__pycache__", ".pytest_cache", "*.so"))
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                              "--no-index", "--ignore-installed", str(source)], capture_output=True, text=True, env=env, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    run = subprocess.run([str(python), "-c", CHECK], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stdout + run.stderr
    patch = subprocess.run([str(env_dir / "bin" / "onmt-structdrop-patch"), "check"], capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=300)
    assert patch.returncode == 0, patch.stdout + patch.stderr

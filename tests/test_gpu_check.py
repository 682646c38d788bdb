"""scripts/gpu_check.sh rehearsed on the CPU (DEVICE=cpu, small sizes): every part runs and exits 0, and the
summary and each part's JSON are written where a lent GPU's call would fetch them from."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from task_data import write_conll, write_ptb

pytest.importorskip("onmt")
ROOT = Path(__file__).resolve().parents[1]
PARTS = ["set-up", "versions", "GPU tests", "layer, float32", "layer, float32, TF32 for cuBLAS and cuDNN",
         "layer, float32, no TF32", "layer, bfloat16", "layer, float32, cupy kernels route",
         "layer, float32, cupy without graphs", "profile, time mode", "profile, time mode, cupy without graphs",
         "kept products, cupy kernels route", "OpenNMT-py step, cupy step products", "OpenNMT-py step",
         "launches per OpenNMT-py step", "task speed, PTB and CoNLL"]


def test_the_gpu_check_rehearses_on_the_cpu(tmp_path):
    write_ptb(tmp_path / "data" / "ptb")
    write_conll(tmp_path / "data" / "conll2003")
    env = dict(os.environ, DEVICE="cpu", PY=sys.executable, SITE=str(tmp_path / "site"),
               TASKDATA=str(tmp_path / "data"))
    result = subprocess.run(["bash", "scripts/gpu_check.sh", str(tmp_path / "out")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert result.stdout.strip().endswith(summary.strip().splitlines()[-1])  # printed last
    statuses = re.findall(r"^\| (.+?) \| (\d+)[^|]* \| \d+ s \|$", summary, re.M)
    assert statuses == [(part, "0") for part in PARTS], summary[:2000]
    assert "| OpenNMT-py | 3.5.1 |" in summary and "ideal" in summary and "compute ops" in summary
    assert "recipes/ptb_small_baseline.yaml" in summary and "recipes/conll2003_baseline.yaml" in summary
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert files == {"summary.md", "log.txt", "layer_float32.json", "layer_bfloat16.json", "layer_float32_tf32.json",
                     "products.json", "nmt_step.json", "nmt_step_cupy.json"}  # at most 8 come back from a lent machine


def test_only_runs_the_parts_it_names(tmp_path):
    env = dict(os.environ, DEVICE="cpu", PY=sys.executable, SITE=str(tmp_path / "site"), ONLY="^versions$")
    result = subprocess.run(["bash", "scripts/gpu_check.sh", str(tmp_path / "out")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = (tmp_path / "out" / "summary.md").read_text()
    statuses = dict(re.findall(r"^\| (.+?) \| ([^|]+?) \| \d+ s \|$", summary, re.M))
    assert list(statuses) == PARTS
    assert statuses["set-up"] == statuses["versions"] == "0"  # always run
    assert all(statuses[part] == "not run (ONLY)" for part in PARTS[2:])


def test_an_invalid_only_pattern_is_one_line(tmp_path):
    env = dict(os.environ, DEVICE="cpu", PY=sys.executable, ONLY="(")
    result = subprocess.run(["bash", "scripts/gpu_check.sh", str(tmp_path / "out")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "ONLY=( is not a valid regular expression" in result.stderr
    assert not (tmp_path / "out").exists()  # nothing run, nothing written

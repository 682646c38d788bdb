#!/usr/bin/env bash
# Download the wheels that scripts/gpu_check.sh installs on a GPU machine that cannot reach a package index:
# OpenNMT-py 3.5.1 and those of its imports that such a machine (torch, CuPy, sentencepiece, sacrebleu, pytest
# already there) lacks. Usage: scripts/gpu_wheels.sh [DIR (default .whl)] [PYTHON_VERSION (default 3.12)]
# DIR must be ignored by git (.whl/ is) and carried to the machine beside the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PYVER=${2:-3.12}
PY=${PY:-python3}
mkdir -p "$DIR"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    platforms+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${platforms[@]}" -d "$DIR" \
    OpenNMT-py==3.5.1 configargparse==1.9.0 pyonmttok==1.38.1 rapidfuzz==3.14.6 pyahocorasick==2.3.1
ls "$DIR"

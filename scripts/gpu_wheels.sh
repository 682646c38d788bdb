#!/usr/bin/env bash
# Prepare what scripts/gpu_check.sh needs on a GPU machine that cannot reach a package index: the wheels of
# OpenNMT-py 3.5.1 and of those of its and the tasks' imports that such a machine (torch, CuPy, sentencepiece,
# sacrebleu, pytest already there) lacks, into DIR; and the PTB and CoNLL-2003 files of its task speeds, copied
# from DATA (ptb/, conll2003/ as in ../shared/data) into .gpu_data/ when DATA has them.
# Usage: scripts/gpu_wheels.sh [DIR (default .whl)] [PYTHON_VERSION (default 3.12)] [DATA (default ../shared/data)]
# DIR and .gpu_data/ are ignored by git and carried to the machine beside the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PYVER=${2:-3.12}
DATA=${3:-../shared/data}
PY=${PY:-python3}
mkdir -p "$DIR"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    platforms+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${platforms[@]}" -d "$DIR" \
    OpenNMT-py==3.5.1 configargparse==1.9.0 pyonmttok==1.38.1 rapidfuzz==3.14.6 pyahocorasick==2.3.1 \
    pytorch-crf==0.7.2
ls "$DIR"
if [[ -f $DATA/ptb/ptb.train.txt && -f $DATA/conll2003/eng.train ]]; then
    mkdir -p .gpu_data/ptb .gpu_data/conll2003
    cp "$DATA"/ptb/ptb.{train,valid,test}.txt .gpu_data/ptb/
    cp "$DATA"/conll2003/eng.{train,testa,testb} .gpu_data/conll2003/
    echo "task data in .gpu_data/ (carry it too)"
else
    echo "no PTB or CoNLL files under $DATA: the check's task speeds will say so" >&2
fi

#!/usr/bin/env bash
# Training words/s of structured against ordinary dropout on the full PTB and CoNLL-2003 training data, on an
# otherwise idle machine, one thread: each recipe and its twin trained one step of each in turn in one process
# (python -m onmt_structdrop.tasks.speed), 400 PTB windows and one epoch of CoNLL batches after 10 untimed ones.
# Writes OUT_DIR/{ptb_small,conll2003}.{json,png}. Usage: scripts/task_speed.sh OUT_DIR [PTB_DIR] [CONLL_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/task_speed.sh OUT_DIR [PTB_DIR] [CONLL_DIR]}
PTB=${2:-data/ptb}
CONLL=${3:-data/conll2003}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1
$PY -m onmt_structdrop.tasks.speed lm recipes/ptb_small.yaml recipes/ptb_small_baseline.yaml -data "$PTB" \
    -threads 1 --steps 400 --json "$OUT/ptb_small.json" --plot "$OUT/ptb_small.png"
$PY -m onmt_structdrop.tasks.speed ner recipes/conll2003.yaml recipes/conll2003_baseline.yaml \
    -train "$CONLL/eng.train" -dev "$CONLL/eng.testa" -test "$CONLL/eng.testb" -threads 1 --steps 439 \
    --json "$OUT/conll2003.json" --plot "$OUT/conll2003.png"

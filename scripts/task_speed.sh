#!/usr/bin/env bash
# Training words/s of structured against ordinary dropout on the full PTB and CoNLL-2003 training data, on an
# otherwise idle machine: each recipe and its twin alternate twice (A B A B), one thread each, a fixed number
# of batches, then `report` tables them. Usage: scripts/task_speed.sh OUT_DIR [PTB_DIR] [CONLL_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/task_speed.sh OUT_DIR [PTB_DIR] [CONLL_DIR]}
PTB=${2:-data/ptb}
CONLL=${3:-data/conll2003}
PY=${PY:-.venv/bin/python}
for round in 1 2; do
  for recipe in ptb_small ptb_small_baseline; do
    OMP_NUM_THREADS=1 $PY -m onmt_structdrop.tasks.lm -config recipes/$recipe.yaml -data "$PTB" -epochs 1 \
      -max_steps_per_epoch 400 -threads 1 -seed $round -save_dir "$OUT/${recipe}_r$round" > /dev/null 2>&1
  done
  for recipe in conll2003 conll2003_baseline; do
    OMP_NUM_THREADS=1 $PY -m onmt_structdrop.tasks.ner -config recipes/$recipe.yaml -train "$CONLL/eng.train" \
      -dev "$CONLL/eng.testa" -test "$CONLL/eng.testb" -epochs 1 -max_steps_per_epoch 150 -threads 1 \
      -seed $round -save_dir "$OUT/${recipe}_r$round" > /dev/null 2>&1
  done
done
$PY -m onmt_structdrop.tasks.report "$OUT"/ptb_small_r1 "$OUT"/ptb_small_baseline_r1 "$OUT"/ptb_small_r2 \
    "$OUT"/ptb_small_baseline_r2
$PY -m onmt_structdrop.tasks.report "$OUT"/conll2003_r1 "$OUT"/conll2003_baseline_r1 "$OUT"/conll2003_r2 \
    "$OUT"/conll2003_baseline_r2

#!/usr/bin/env bash
# Training tokens/s of the structured Multi30k recipe against its stock twin on an otherwise idle machine:
# the two alternate (A B A B ...), one thread each, the same steps from the same seed, then the report lines of
# each log are tabled. Usage: scripts/nmt_speed.sh OUT_DIR [STEPS] [ROUNDS] [RECIPE]
# (RECIPE: the structured recipe's stem, default multi30k_deen; its twin is RECIPE_baseline).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: scripts/nmt_speed.sh OUT_DIR [STEPS] [ROUNDS] [RECIPE]}
STEPS=${2:-200}
ROUNDS=${3:-2}
RECIPE=${4:-multi30k_deen}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
logs=()
for round in $(seq 1 "$ROUNDS"); do
  for recipe in "$RECIPE" "${RECIPE}_baseline"; do
    run="$OUT/${recipe}_r$round"
    OMP_NUM_THREADS=1 $PY -m onmt.bin.train -config "recipes/$recipe.yaml" -train_steps "$STEPS" \
      -valid_steps 1000000 -save_checkpoint_steps 1000000 -report_every 25 -save_model "$run/model" \
      -log_file "$run.log" > "$run.out" 2>&1 || { echo "onmt_train failed: see $run.out" >&2; exit 1; }
    logs+=("$run.log")
  done
done
$PY -m onmt_structdrop.tools.nmt_speed "${logs[@]}"

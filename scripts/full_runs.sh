#!/usr/bin/env bash
# The full recipe runs of docs/results.md ("Full recipes"): each recipe and its ordinary-dropout twin to the end,
# seeds 1 and 2, one thread each at the lowest priority, so that other work on the machine goes first. A run that
# has a checkpoint continues from it (-resume true); a finished one (its test metric in history.json) is skipped,
# so the script can be started again after a kill or on another day and picks up where it stopped.
#   scripts/full_runs.sh ptb   RUNS_DIR [DATA_DIR]     PTB small, recipes/ptb_small*.yaml, 13 epochs
#   scripts/full_runs.sh conll RUNS_DIR [DATA_DIR]     CoNLL-2003, recipes/conll2003*.yaml, 30 epochs
# Extra seeds: SEEDS="1 2 3".
set -euo pipefail
cd "$(dirname "$0")/.."
TASK=${1:?usage: scripts/full_runs.sh ptb|conll RUNS_DIR [DATA_DIR]}
RUNS=${2:?usage: scripts/full_runs.sh ptb|conll RUNS_DIR [DATA_DIR]}
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-1 2}
export OMP_NUM_THREADS=1

case "$TASK" in
    ptb)   cmd=onmt_structdrop.tasks.lm; recipes="ptb_small ptb_small_baseline"; metric=test_ppl
           data=(-data "${3:-data/ptb}") ;;
    conll) cmd=onmt_structdrop.tasks.ner; recipes="conll2003 conll2003_baseline"; metric=test_f1
           d=${3:-data/conll2003}; data=(-train "$d/eng.train" -dev "$d/eng.testa" -test "$d/eng.testb") ;;
    *)     echo "full_runs.sh: unknown task '$TASK' (ptb or conll)" >&2; exit 2 ;;
esac

finished() {  # the run's history has its last epoch with the test metric: it ran to the end
    [[ -f "$1/history.json" ]] && "$PY" - "$1/history.json" "$metric" <<'PY'
import json, sys
record = json.load(open(sys.argv[1]))
last = record["epochs"][-1] if record["epochs"] else {}
sys.exit(0 if last.get("epoch") == int(record["config"]["epochs"]) and sys.argv[2] in last else 1)
PY
}

for seed in $SEEDS; do
    for recipe in $recipes; do
        dir="$RUNS/${recipe}_s$seed"
        if finished "$dir"; then
            echo "full_runs: $dir finished"
            continue
        fi
        resume=false
        [[ -f "$dir/last.pt" ]] && resume=true
        echo "full_runs: $dir (resume $resume)"
        nice -n 19 "$PY" -m "$cmd" -config "recipes/$recipe.yaml" "${data[@]}" -seed "$seed" -threads 1 \
            -save_dir "$dir" -resume "$resume"
    done
done

#!/usr/bin/env bash
# The full recipe runs of docs/results.md ("Full recipes"): each recipe and its ordinary-dropout twin to the end,
# one thread each at the lowest priority, so that other work on the machine goes first. A run that has a
# checkpoint continues from it; a finished one is skipped, so the script can be started again after a kill and
# picks up where it stopped.
#   scripts/full_runs.sh ptb      RUNS_DIR [DATA_DIR]   PTB small, recipes/ptb_small*.yaml, 13 epochs, seeds 1 2
#   scripts/full_runs.sh conll    RUNS_DIR [DATA_DIR]   CoNLL-2003, recipes/conll2003*.yaml, 30 epochs, seeds 1 2
#   scripts/full_runs.sh multi30k RUNS_DIR              Multi30k, recipes/multi30k_deen*.yaml, seeds 1234 42: to
#       convergence (OpenNMT-py's early stopping after 2 validations, 1,000 steps, without a better perplexity)
#       or 6,000 steps, a checkpoint every 500 steps (resumed with -train_from)
# Other seeds: SEEDS="1 2 3". DATA_DIR defaults to data/ptb and data/conll2003; Multi30k reads the recipe's
# data/multi30k_deen (nmt_prepare's output).
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: scripts/full_runs.sh ptb|conll|multi30k RUNS_DIR [DATA_DIR]"
TASK=${1:?$usage}
RUNS=$(realpath -m "${2:?$usage}")
DATA=${3:-}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1

case "$TASK" in
    ptb)      recipes="ptb_small ptb_small_baseline"; SEEDS=${SEEDS:-1 2} ;;
    conll)    recipes="conll2003 conll2003_baseline"; SEEDS=${SEEDS:-1 2} ;;
    multi30k) recipes="multi30k_deen multi30k_deen_baseline"; SEEDS=${SEEDS:-1234 42} ;;
    *)        echo "full_runs.sh: unknown task '$TASK' ($usage)" >&2; exit 2 ;;
esac

task_run() {  # a PTB or CoNLL run, from its checkpoint if it has one; skipped once its history has every epoch
    local recipe=$1 seed=$2 dir=$3 metric data
    if [[ $TASK == ptb ]]; then
        metric=test_ppl; data=(-data "${DATA:-data/ptb}")
    else
        metric=test_f1; local d=${DATA:-data/conll2003}
        data=(-train "$d/eng.train" -dev "$d/eng.testa" -test "$d/eng.testb")
    fi
    if [[ -f "$dir/history.json" ]] && "$PY" - "$dir/history.json" "$metric" <<'PY'
import json, sys
record = json.load(open(sys.argv[1]))
last = record["epochs"][-1] if record["epochs"] else {}
sys.exit(0 if last.get("epoch") == int(record["config"]["epochs"]) and sys.argv[2] in last else 1)
PY
    then
        echo "full_runs: $dir finished"
        return
    fi
    local resume=false module=onmt_structdrop.tasks.lm
    [[ -f "$dir/last.pt" ]] && resume=true
    [[ $TASK == conll ]] && module=onmt_structdrop.tasks.ner
    echo "full_runs: $dir (resume $resume)"
    nice -n 19 "$PY" -m $module -config "recipes/$recipe.yaml" "${data[@]}" -seed "$seed" -threads 1 \
        -save_dir "$dir" -resume "$resume"
}

nmt_run() {  # a Multi30k run, from its last checkpoint if it has one; skipped once it stopped
    local recipe=$1 seed=$2 dir=$3
    if [[ -f "$dir/done" ]]; then
        echo "full_runs: $dir finished"
        return
    fi
    local last from=()
    last=$(ls "$dir"/model_step_*.pt 2>/dev/null | sort -V | tail -1 || true)
    [[ -n "$last" ]] && from=(-train_from "$last")
    local structured=()
    [[ $recipe == multi30k_deen ]] && structured=(-sd_seed "$seed")
    echo "full_runs: $dir (${last:-from the start})"
    nice -n 19 "$PY" -m onmt.bin.train -config "recipes/$recipe.yaml" "${from[@]}" -seed "$seed" "${structured[@]}" \
        -src_vocab "$RUNS/multi30k_vocab.src" -tgt_vocab "$RUNS/multi30k_vocab.tgt" -save_data "$dir/data" \
        -train_steps 6000 -valid_steps 500 -save_checkpoint_steps 500 -keep_checkpoint -1 -early_stopping 2 \
        -save_model "$dir/model" -log_file "$dir/train.log"
    touch "$dir/done"
}

mkdir -p "$RUNS"
if [[ $TASK == multi30k && ! -f "$RUNS/multi30k_vocab.src" ]]; then
    nice -n 19 "$PY" -m onmt.bin.build_vocab -config recipes/multi30k_deen.yaml -n_sample -1 \
        -src_vocab "$RUNS/multi30k_vocab.src" -tgt_vocab "$RUNS/multi30k_vocab.tgt" -save_data "$RUNS/vocab_data"
fi
for seed in $SEEDS; do
    for recipe in $recipes; do
        if [[ $TASK == multi30k ]]; then
            nmt_run "$recipe" "$seed" "$RUNS/${recipe}_s$seed"
        else
            task_run "$recipe" "$seed" "$RUNS/${recipe}_s$seed"
        fi
    done
done

#!/usr/bin/env bash
# The GPU check, in one call on a lent GPU machine (which reaches no package index): set-up from the wheels
# that scripts/gpu_wheels.sh downloaded into .whl/ (carried beside the working tree), the GPU tests, the layer
# benchmark (cuDNN nn.LSTM + dropout, dense masks, each mask mode and backend, fp32 with and without TF32, bf16;
# the cupy backend's two product routes, with and without CUDA graphs), the kept products against cuBLAS, the
# OpenNMT-py training step at p = 0.1-0.5, and the PTB and CoNLL recipes against their twins, round-robin (from the
# data scripts/gpu_wheels.sh copied into .gpu_data/, carried too). Each part has its own time limit (590 s in all,
# under the 600 s of one call on a lent machine; about 220 s without the task speeds on an H200) and a failing
# part does not stop the others. Writes
# OUT/summary.md (versions, each part's exit status and printed tables; rewritten after every part, so that a call
# cut short still brings back what finished; printed last), OUT/log.txt (everything else) and each benchmark's
# JSON: 8 files at most, all a lent machine sends back.
#
#   scripts/gpu_check.sh [OUT]           OUT: default $OUT, else runs/gpu_check
#   DEVICE=cpu scripts/gpu_check.sh      rehearses it here, at small sizes (every part but the GPU's own runs)
#   ONLY='tests|profile' scripts/gpu_check.sh   runs only the parts whose names match (a bash regex; set-up and
#                                              versions always run): a second, shorter call within one lease
#
# Env: PY (python3), WHEELS (.whl), SITE (where the wheels and this package are installed, /tmp/onmt_structdrop_site),
# TASKDATA (.gpu_data: ptb/ptb.{train,valid,test}.txt and conll2003/eng.{train,testa,testb}).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-runs/gpu_check}}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/onmt_structdrop_site}
TASKDATA=${TASKDATA:-.gpu_data}
[[ x =~ ${ONLY:-x} ]]
if [[ $? == 2 ]]; then
    echo "ONLY=$ONLY is not a valid regular expression (bash =~); name the parts, e.g. ONLY='GPU tests|profile'" >&2
    exit 2
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/log.txt
SUMMARY=$OUT/summary.md
TABLES=$(mktemp)  # the parts' printed tables, outside OUT
PART=$(mktemp)
trap 'rm -f "$TABLES" "$PART"' EXIT
: > "$LOG"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
export PYTHONPATH="$PWD:$SITE:$SITE/standins${PYTHONPATH:+:$PYTHONPATH}"
parts=()

write_summary() {
    {
        echo "# GPU check ($DEVICE), $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo
        echo "| part | exit | time |"
        echo "|---|---|---|"
        printf '%s\n' "${parts[@]}"
        cat "$TABLES"
    } > "$SUMMARY"
}

part() {  # part NAME SECONDS COMMAND...: its stdout goes to the summary, its stderr to the log
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    if [[ -n ${ONLY:-} && $name != set-up && $name != versions && ! $name =~ $ONLY ]]; then
        parts+=("| $name | not run (ONLY) | 0 s |")
        write_summary
        return 0
    fi
    echo "== $name" | tee -a "$LOG" >&2
    timeout "$limit" bash -c '"$@"' part "$@" > "$PART" 2>> "$LOG"  # bash -c: a function too
    rc=$?
    parts+=("| $name | $rc$([[ $rc == 124 ]] && echo ' (time limit)') | $((SECONDS - start)) s |")
    { echo; echo "## $name"; echo; echo '```'; cat "$PART"; echo '```'; } >> "$TABLES"
    write_summary
    return "$rc"
}

set_up() {
    if ! "$PY" -c "import onmt" 2>/dev/null; then
        if [[ ! -d $WHEELS ]]; then
            echo "no $WHEELS folder: run scripts/gpu_wheels.sh where pip works, and carry it"
            return 1
        fi
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" --find-links "$WHEELS" \
            OpenNMT-py configargparse pyonmttok rapidfuzz pyahocorasick pytorch-crf || return 1
    fi
    # OpenNMT-py imports spacy and fasttext with every transform module; the check runs neither transform
    mkdir -p "$SITE/standins"
    for module in spacy fasttext; do
        "$PY" -c "import $module" 2>/dev/null ||
            echo "\"\"\"A stand-in for $module: the transform that needs it imports it; nothing here runs it.\"\"\"" \
                > "$SITE/standins/$module.py"
    done
    # the package's metadata (its onmt.plugins entry point); the code itself is read from the working tree
    ONMT_STRUCTDROP_NATIVE=0 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
        --target "$SITE" --upgrade . || return 1
    "$PY" -m onmt_structdrop.tools.patch_onmt apply
}

versions() {
    "$PY" - "$DEVICE" <<'PY'
import subprocess, sys
import torch
import onmt
device = sys.argv[1]
rows = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (rehearsal)",
        "torch": torch.__version__, "CUDA (torch)": torch.version.cuda, "cuDNN": torch.backends.cudnn.version(),
        "OpenNMT-py": onmt.__version__}
try:
    rows["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=30).stdout.strip() or "n/a"
except OSError:
    rows["driver"] = "n/a (no nvidia-smi)"
try:
    import cupy
    rows["CuPy"] = f"{cupy.__version__} (CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()})"
except Exception as err:  # not installed, or no GPU
    rows["CuPy"] = f"n/a ({type(err).__name__}: {err})"
print("| what | version |\n|---|---|")
for key, value in rows.items():
    print(f"| {key} | {value} |")
PY
}

task_speed() {  # each task recipe against its twin, one training step of each in turn (no JSON: 8 files at most)
    local speed=("$PY" -m onmt_structdrop.tasks.speed) ptb=(small medium large) lm=() ner=() steps=(--steps 60)
    if [[ ! -f $TASKDATA/ptb/ptb.train.txt || ! -f $TASKDATA/conll2003/eng.train ]]; then
        echo "no PTB or CoNLL files in $TASKDATA: run scripts/gpu_wheels.sh where ../shared/data is, and carry $TASKDATA"
        return 1
    fi
    if [[ $DEVICE != cuda ]]; then  # a rehearsal: the small recipes, smaller, two steps
        ptb=(small) lm=(-hidden_size 16 -batch_size 4 -bptt 5) ner=(-hidden_size 8 -word_dim 8) steps=(--steps 2 --warmup 1)
    fi
    for size in "${ptb[@]}"; do
        "${speed[@]}" lm "recipes/ptb_$size.yaml" "recipes/ptb_${size}_baseline.yaml" -data "$TASKDATA/ptb" \
            -device "$DEVICE" ${lm[@]+"${lm[@]}"} "${steps[@]}" || return
    done
    "${speed[@]}" ner recipes/conll2003.yaml recipes/conll2003_baseline.yaml -train "$TASKDATA/conll2003/eng.train" \
        -dev "$TASKDATA/conll2003/eng.testa" -test "$TASKDATA/conll2003/eng.testb" -device "$DEVICE" \
        ${ner[@]+"${ner[@]}"} "${steps[@]}"
}

export DEVICE PY WHEELS SITE TASKDATA
export -f set_up versions task_speed
if [[ $DEVICE == cuda ]]; then
    LAYER=(--layers 2 --hidden 1024 --batch 64 --seq 50 --repeats 20)
    PRODUCTS=(--rows 64 3200 --inputs 1024 --outputs 4096 --repeats 50)
    NMT=()
    OPS=()
    RATES=(0.1 0.2 0.3 0.4 0.5)
else  # a rehearsal: every part, small
    LAYER=(--layers 2 --hidden 64 --batch 8 --seq 10 --repeats 2 --warmup 1)
    PRODUCTS=(--rows 16 --inputs 64 --outputs 256 --repeats 2)
    NMT=(--hidden 32 --word-vec-size 32 --batch 8 --src-len 8 --tgt-len 8 --repeats 2 --warmup 1)
    OPS=(--hidden 32 --word-vec-size 32 --batch 8 --src-len 8 --tgt-len 8 --warmup 1)
    RATES=(0.3)
fi
part "set-up" 40 set_up
part "versions" 20 versions
part "GPU tests" 45 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_cuda.py tests/test_cuda_sources.py
# the cupy backend's rows are labelled [cupy] beside the torch backend's. Its products take the cublas route unless
# ONMT_STRUCTDROP_CUPY_PRODUCTS=kernels; float32 products run as torch sets TF32 (cuBLAS off, cuDNN on) unless --tf32
CUPY=(env ONMT_STRUCTDROP_CUPY=on)  # whatever the machine's environment says
BENCH=("$PY" -m onmt_structdrop.tools.bench --device "$DEVICE" "${LAYER[@]}" --dropout 0.5 --recurrent-dropout 0.5)
part "layer, float32" 45 "${CUPY[@]}" "${BENCH[@]}" --json "$OUT/layer_float32.json"
part "layer, float32, TF32 for cuBLAS and cuDNN" 40 "${CUPY[@]}" "${BENCH[@]}" --tf32 on --modes time batch \
    --output-size 0 --json "$OUT/layer_float32_tf32.json"
part "layer, float32, no TF32" 30 "${CUPY[@]}" "${BENCH[@]}" --tf32 off --modes time --output-size 0
part "layer, bfloat16" 40 "${CUPY[@]}" "${BENCH[@]}" --dtype bfloat16 --json "$OUT/layer_bfloat16.json"
part "layer, float32, cupy kernels route" 30 "${CUPY[@]}" ONMT_STRUCTDROP_CUPY_PRODUCTS=kernels "${BENCH[@]}" \
    --modes time batch --output-size 0
part "layer, float32, cupy without graphs" 25 "${CUPY[@]}" ONMT_STRUCTDROP_CUDA_GRAPHS=0 "${BENCH[@]}" \
    --modes time --output-size 0
part "profile, time mode" 40 "${CUPY[@]}" "${BENCH[@]}" --modes time --output-size 0 --repeats 2 --profile 12
part "profile, time mode, cupy without graphs" 30 "${CUPY[@]}" ONMT_STRUCTDROP_CUDA_GRAPHS=0 "${BENCH[@]}" \
    --modes time --output-size 0 --repeats 2 --profile 12
part "kept products, cupy kernels route" 25 "${CUPY[@]}" ONMT_STRUCTDROP_CUPY_PRODUCTS=kernels \
    "$PY" -m onmt_structdrop.tools.product_bench --device "$DEVICE" "${PRODUCTS[@]}" --rates 0.3 0.5 \
    --json "$OUT/products.json"
part "OpenNMT-py step, cupy step products" 30 "${CUPY[@]}" "$PY" -m onmt_structdrop.tools.nmt_bench \
    --device "$DEVICE" ${NMT[@]+"${NMT[@]}"} --rates 0.3 --modes time --json "$OUT/nmt_step_cupy.json"
part "OpenNMT-py step" 50 "$PY" -m onmt_structdrop.tools.nmt_bench --device "$DEVICE" ${NMT[@]+"${NMT[@]}"} \
    --rates "${RATES[@]}" --json "$OUT/nmt_step.json"
part "launches per OpenNMT-py step" 15 "$PY" -m onmt_structdrop.tools.step_ops --device "$DEVICE" \
    ${OPS[@]+"${OPS[@]}"}  # its table in the summary: no more than 8 files come back
part "task speed, PTB and CoNLL" 85 task_speed

cat "$SUMMARY"

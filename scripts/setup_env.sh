#!/usr/bin/env bash
# Create or update the project virtual environment (.venv): torch, OpenNMT-py 3.5.1 without its torch pin,
# its runtime dependencies, the test tools and this package in editable mode, then apply the patch set to
# OpenNMT-py (patches/). A second run with unchanged requirements does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}   # a CPU build lies on disk on the project's machines
ONMT_SPEC="OpenNMT-py==3.5.1"

stamp="$VENV/.onmt-structdrop-installed"
digest=$(cat setup.py requirements/*.txt scripts/setup_env.sh patches/*/*.patch onmt_structdrop/csrc/* | sha256sum | cut -d' ' -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$digest" ]] && "$VENV/bin/onmt-structdrop-patch" check >/dev/null 2>&1
then
    echo "setup: $VENV is up to date"
    exit 0
fi

# --system-site-packages lets a torch that the machine already has (a CUDA build on a GPU box) be kept.
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv --system-site-packages "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }

if "$VENV/bin/python" - <<'PY'
import sys
try:
    import torch
except ImportError:
    sys.exit(1)
major, minor = (int(v) for v in torch.__version__.split(".")[:2])
sys.exit(0 if (major, minor) >= (2, 6) else 1)  # 2.6: torch.load is weights-only unless asked, so no file runs code
PY
then
    echo "setup: keeping torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
else
    echo "setup: installing $TORCH_SPEC"
    pip install -q "$TORCH_SPEC"
fi
pip install -q -r requirements/opennmt.txt -r requirements/tasks.txt -r requirements/dev.txt
pip install -q --no-deps "$ONMT_SPEC"
pip install -q --no-deps --no-build-isolation -e .
if ! "$VENV/bin/onmt-structdrop-patch" apply; then
    # files patched by another version of the patch set: start again from the released package
    echo "setup: reinstalling $ONMT_SPEC, then patching it again"
    onmt_dir=$("$VENV/bin/python" -c "import importlib.util as u; print(u.find_spec('onmt').submodule_search_locations[0])")
    pip uninstall -q -y OpenNMT-py
    rm -rf "$onmt_dir"
    pip install -q --no-deps "$ONMT_SPEC"
    "$VENV/bin/onmt-structdrop-patch" apply
fi
"$VENV/bin/python" - <<'PY'
import onmt, torch
import onmt_structdrop
from onmt_structdrop.ops import native_backend
native, why = native_backend.extension()
try:
    engine = native.isa() if native else f"not built: {why}"
except RuntimeError as err:  # ONMT_STRUCTDROP_ISA names kernels this CPU cannot run
    engine = f"unusable: {err}"
print("setup: torch", torch.__version__, "| OpenNMT-py", onmt.__version__, "| onmt_structdrop",
      onmt_structdrop.__version__, "| native engine:", engine)
PY
echo "$digest" > "$stamp"

#!/usr/bin/env bash
# The GPU check in one script: install from wheels carried beside it (no network), run the
# CUDA-path checks and the real-size benchmarks with random weights, write one JSON of figures.
# Sized to take under 8 minutes on one H100 (gpu_check.py's BUDGET; not yet timed on one).
# Every section runs with its own data dir, database and storage, and none of the caller's
# SYNTHPIPE_* settings or synthpipe.toml.
#
#   benchmarks/gpu.sh --download          # where PyPI is reachable: cp312 wheels into benchmarks/wheels/
#   benchmarks/gpu.sh [OUT.json]          # on the GPU machine: venv over its torch, install, check, bench
#   benchmarks/gpu.sh --dry-run [OUT]     # any machine, this Python: CPU, tiny sizes, every part quickly
#   benchmarks/gpu.sh OUT --sections flux,train     # some sections only (also after --dry-run OUT)
#
# SYNTHPIPE_BENCH_PYTHON: the Python with CUDA torch (default /opt/torch/.venv/bin/python3);
# SYNTHPIPE_BENCH_WHEELS: the wheel folder (default benchmarks/wheels);
# SYNTHPIPE_BENCH_DRY_PYTHON: the Python of the dry run (default python3 on PATH).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
WHEELS=${SYNTHPIPE_BENCH_WHEELS:-$HERE/wheels}
BASE_PY=${SYNTHPIPE_BENCH_PYTHON:-/opt/torch/.venv/bin/python3}
LIMIT_S=470  # the whole check; gpu_check.py gives each section its own share
DRY_LIMIT_S=900  # the dry run on a small CPU machine

# What the GPU machine's Python lacks (it has torch, transformers, accelerate, torchvision,
# safetensors, tokenizers and their dependencies). --no-deps: every wheel is named here.
WHEEL_LIST=(
  diffusers importlib-metadata zipp
  xgrammar apache-tvm-ffi
  peft psutil
  pydantic pydantic-core pydantic-settings python-dotenv typing-inspection annotated-types typing-extensions
  sqlalchemy greenlet alembic mako markupsafe
  fsspec pyyaml pillow tqdm
  prometheus-client nvidia-ml-py
)

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }

case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --download)
    mkdir -p "$WHEELS"
    python3 -m pip download --only-binary=:all: --python-version 3.12 --implementation cp --no-deps \
      -d "$WHEELS" "${WHEEL_LIST[@]}"
    ls "$WHEELS" | wc -l | xargs -I{} echo "{} wheels in $WHEELS"
    exit 0 ;;
  --dry-run)
    OUT=${2:-gpu-dry-run.json}
    cd "$ROOT"
    shift $(( $# > 1 ? 2 : 1 ))
    PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" timeout "$DRY_LIMIT_S" "${SYNTHPIPE_BENCH_DRY_PYTHON:-python3}" \
      "$HERE/gpu_check.py" --dry-run --out "$OUT" "$@"
    exit $? ;;
esac

OUT=${1:-$ROOT/gpu-figures.json}
[ -x "$BASE_PY" ] || { echo "gpu.sh: no Python at $BASE_PY (set SYNTHPIPE_BENCH_PYTHON)" >&2; exit 2; }
[ -d "$WHEELS" ] || { echo "gpu.sh: no wheel folder $WHEELS (run benchmarks/gpu.sh --download where PyPI is reachable)" >&2; exit 2; }
"$BASE_PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
  || { echo "gpu.sh: $BASE_PY sees no CUDA card; use --dry-run on a machine without one" >&2; exit 2; }

VENV=$(mktemp -d /tmp/synthpipe-gpu-venv.XXXXXX)
trap 'rm -rf "$VENV"' EXIT
started=$(date +%s)
# the card's torch, transformers etc. stay the machine's; the venv adds only what is carried
"$BASE_PY" -m venv --system-site-packages "$VENV"
"$VENV/bin/python" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" "$WHEELS"/*.whl
echo "installed $(ls "$WHEELS"/*.whl | wc -l) wheels in $(( $(date +%s) - started )) s" >&2

cd "$ROOT"
LEFT=$(( LIMIT_S - ($(date +%s) - started) ))
PYTHONPATH="$ROOT" timeout "$LEFT" "$VENV/bin/python" "$HERE/gpu_check.py" --out "$OUT" --max-seconds "$(( LEFT - 5 ))" "${@:2}"
status=$?
echo "gpu.sh: $(( $(date +%s) - started )) s in all; figures in $OUT" >&2
exit $status

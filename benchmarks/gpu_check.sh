#!/usr/bin/env bash
# The GPU checks, as one prepared script for a lent GPU machine (docs/benchmarks.md, "GPU").
#
#   bash benchmarks/gpu_check.sh [STAGE ...]          default: setup gemma pytest measure doctor
#
# Run from the repository root. It needs what travels with the checkout in .gpu/ (ignored by git;
# benchmarks/gpu_payload.sh builds it on a CPU machine):
#   .gpu/device/    the llama-cpp-python CUDA wheel (sm_90), its installer, its small pure-Python needs
#   .gpu/sdist/     llama-cpp-python's source, repacked to a few MB (for the native CPU build of `amx`)
#   .gpu/wheels/    the pure-Python wheels modelfix and its tests need that the GPU machine lacks
# Stages (each idempotent: what is done already is skipped):
#   setup   install the CUDA wheel into /tmp/site (and the other wheels), print the machine's facts
#   survey  write a Q4_0 model of 24 layers and measure, with plain llama-cpp-python, load time,
#           prompt and generation speed and GPU memory for n_gpu_layers 0 / half / all, n_ctx 512 /
#           4096, and what is left after close() (benchmarks/gpu_survey.py)
#   amx     on a CPU with AMX only: build llama-cpp-python natively (AMX on) for the CPU, run
#           modelfix's backend probe and its child with repacking on and off (the crash of issue 9)
#   gemma   assemble .gpu/gemma/*.part0{0..3} (if carried) into the Gemma 3 270M file, sha256-checked
#   pytest  modelfix's GPU tests and pool tests on the GPU (`pytest -m gpu`, then tests/test_pool*.py)
#   measure through modelfix's pool (benchmarks/gpu_measure.py): n_gpu_layers 0 vs all for the 24-layer
#           model, Gemma (if assembled) and a 32-layer one: load s, tokens/s, NVML vs estimate; two
#           models swapping under a budget for one; VRAM after unload; "auto" under a partial budget
#   doctor  `python -m modelfix doctor` on the GPU machine
# Every step has a timeout and a failed stage does not stop the next one. Whole run: about 4 minutes.
# Results go to $OUT (the device tool's folder), else to ./gpu-out.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$REPO/gpu-out}
mkdir -p "$OUT"
SITE=/tmp/site
MODELS=/tmp/modelfix-gpu-models
STAGES=("$@")
[ ${#STAGES[@]} -gt 0 ] || STAGES=(setup gemma pytest measure doctor)
GEMMA_SHA=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  # modelfix.testing.pretrained: the package's EXPECTED_SHA256
PY=${PY:-python3}
# modelfix travels as a folder on PYTHONPATH (no entry points): name its pytest plugin, unless installed
$PY -c "import importlib.metadata as m; exit(not [e for e in m.entry_points(group=\"pytest11\") if e.name == \"modelfix\"])" 2>/dev/null && PLUGIN= || PLUGIN="-p modelfix.pytest_plugin"
started=$(date +%s)
say() { echo "[gpu_check +$(($(date +%s) - started))s] $*"; }

setup() {
  {
    date -u
    nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,memory.used --format=csv
    grep -m1 'model name' /proc/cpuinfo
    echo "cores: $(nproc)"
    grep -m1 -o -w 'amx[a-z0-9_]*' /proc/cpuinfo | sort -u | tr '\n' ' '; echo "(amx flags)"
    grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx512f|avx2|avx512_vnni|avx_vnni)$' | tr '\n' ' '; echo
    uname -r
    ldd --version | head -1
    $PY --version
    $PY -m pip list 2>/dev/null | grep -iE '^(numpy|huggingface|pytest|filelock|fsspec|xxhash|pluggy|tqdm|nvidia-ml|pynvml)' || true
  } > "$OUT/system.txt" 2>&1
  if [ ! -f "$SITE/env.sh" ]; then
    bash .gpu/device/INSTALL-ON-DEVICE.sh > "$OUT/install.log" 2>&1 || { say "wheel install failed"; tail -30 "$OUT/install.log"; return 1; }
  fi
  if ls .gpu/wheels/*.whl > /dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .gpu/wheels/*.whl >> "$OUT/install.log" 2>&1
  fi
  load_env
  $PY -c "import llama_cpp; print('gpu offload:', llama_cpp.llama_supports_gpu_offload())" | tee -a "$OUT/system.txt"
}

load_env() {
  [ -n "${_GPU_ENV:-}" ] && return 0
  [ -f "$SITE/env.sh" ] && . "$SITE/env.sh"  # absent in a CPU rehearsal (PY=.venv/bin/python)
  export PYTHONPATH="$REPO:${PYTHONPATH:-}" _GPU_ENV=1
}

survey() {
  mkdir -p "$MODELS"
  local model=$MODELS/layers24-Q4_0.gguf
  if [ ! -f "$model" ]; then
    say "writing $model"
    $PY -c "from modelfix.testing.gguf import write_tiny_model as w; w('$model', n_layer=24, n_embd=2048, n_head=16, n_ff=5632, n_ctx_train=8192, qtype='Q4_0', name='layers24')" || return 1
  fi
  say "survey of $model"
  $PY benchmarks/gpu_survey.py "$model" --out "$OUT/survey.jsonl" --layers 0,12,-1 --ctx 512,4096 --flash-attn 0 | tee -a "$OUT/survey.txt"
  $PY benchmarks/gpu_survey.py "$model" --out "$OUT/survey.jsonl" --layers -1 --ctx 4096 --flash-attn 1 | tee -a "$OUT/survey.txt"
}

amx() {
  if ! grep -q -w amx_tile /proc/cpuinfo; then
    say "no AMX on this CPU: skipping the native build" | tee "$OUT/amx.log"
    return 0
  fi
  local cpu=/tmp/cpu-site
  if [ ! -d "$cpu/llama_cpp" ]; then
    say "building llama-cpp-python natively for this CPU (no CUDA)"
    CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_CUDA=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      $PY -m pip install -q --no-deps --no-build-isolation --no-index --target "$cpu" .gpu/sdist/*.tar.gz \
      > "$OUT/amx-build.log" 2>&1 || { say "native build failed"; tail -40 "$OUT/amx-build.log"; return 1; }
  fi
  local probe=/tmp/modelfix-probe-Q4_0.gguf
  local env=(env PYTHONPATH="$cpu:$REPO:$SITE" LD_LIBRARY_PATH=)
  {
    "${env[@]}" $PY -c "
import llama_cpp; print(llama_cpp.llama_print_system_info().decode())
from pathlib import Path; from modelfix.probe import write_probe_model; write_probe_model(Path('$probe'))"
    for repack in on off; do
      echo "--- probe child, repack $repack (whole log: amx-$repack.log)"
      "${env[@]}" timeout 60 $PY -m modelfix.probe --child "$probe" --repack $repack --verbose > "$OUT/amx-$repack.log" 2>&1
      echo "exit status: $? (128+N: killed by signal N)"
      grep -E 'AMX|REPACK|repack|buffer size' "$OUT/amx-$repack.log" | head -8
      tail -3 "$OUT/amx-$repack.log"
      if command -v cuda-gdb > /dev/null; then
        echo "--- where it died (cuda-gdb), repack $repack"
        "${env[@]}" timeout 120 cuda-gdb -q -batch -ex run -ex bt -ex "info threads" \
          --args $PY -m modelfix.probe --child "$probe" --repack $repack 2>&1 | grep -vE '^\[(New|Thread|Detaching)' | tail -25
      fi
    done
    echo "--- the probe's verdict"
    "${env[@]}" $PY -m modelfix.probe --cache-dir /tmp/modelfix-probe-cache
    echo "exit status: $?"
  } > "$OUT/amx.log" 2>&1
  cat "$OUT/amx.log"
}

pytest_stage() {
  say "pytest -m gpu, then the pool tests, on the GPU"
  {
    timeout 240 $PY -m pytest -q -p no:cacheprovider $PLUGIN -m gpu -rs tests/ 2>&1 | tail -25
    echo "--- pool tests"
    timeout 240 $PY -m pytest -q -p no:cacheprovider $PLUGIN -n ${JOBS:-8} -rs tests/test_pool.py tests/test_pool_gpu.py tests/test_estimate.py 2>&1 | tail -25
  } | tee "$OUT/pytest.txt"
}

write_model() {  # name n_layer n_embd n_head n_ff
  local model=$MODELS/$1.gguf
  [ -f "$model" ] || timeout 120 $PY -c "from modelfix.testing.gguf import write_tiny_model as w; w('$model', n_layer=$2, n_embd=$3, n_head=$4, n_ff=$5, n_ctx_train=8192, qtype='Q4_0', name='$1')" >&2
  echo "$model"
}

gemma() {
  local dir=.gpu/gemma target=$MODELS/gemma-3-270m-q4_k_m.gguf
  mkdir -p "$MODELS"
  if [ -f "$target" ]; then say "gemma: already assembled"; return 0; fi
  if ! ls $dir/gemma-3-270m-q4_k_m.gguf.part0* > /dev/null 2>&1; then
    say "gemma: skipped (no chunks in $dir)" | tee "$OUT/gemma.txt"; return 0
  fi
  cat $dir/gemma-3-270m-q4_k_m.gguf.part0{0,1,2,3} > "$target.partial"
  local got; got=$(sha256sum "$target.partial" | cut -d' ' -f1)
  if [ "$got" = "$GEMMA_SHA" ]; then mv "$target.partial" "$target"; say "gemma: assembled, sha256 ok" | tee "$OUT/gemma.txt"
  else rm -f "$target.partial"; say "gemma: sha256 $got is not $GEMMA_SHA: skipped" | tee "$OUT/gemma.txt"; fi
}

measure() {
  mkdir -p "$MODELS"
  local models=("$(write_model layers24-Q4_0 24 2048 16 5632)")
  [ -f "$MODELS/gemma-3-270m-q4_k_m.gguf" ] && models+=("$MODELS/gemma-3-270m-q4_k_m.gguf")
  local big; big=$(write_model layers32-Q4_0 32 3072 24 8192) && models+=("$big")
  say "measure: ${models[*]}"
  timeout 300 $PY benchmarks/gpu_measure.py "${models[@]}" --out "$OUT/measure.json" 2>&1 | tee "$OUT/measure.txt"
}

doctor() {
  timeout 60 $PY -m modelfix doctor 2>&1 | tee "$OUT/doctor.txt"
}

for stage in "${STAGES[@]}"; do
  say "stage $stage"
  case $stage in
    setup) setup || exit 1 ;;
    survey) load_env && survey || say "survey failed" ;;
    amx) load_env && amx || say "amx failed" ;;
    pytest) load_env && pytest_stage ;;
    gemma) gemma ;;
    measure) load_env && measure ;;
    doctor) load_env && doctor ;;
    *) echo "unknown stage $stage (setup, survey, amx, gemma, pytest, measure, doctor)"; exit 2 ;;
  esac
done
say "done"

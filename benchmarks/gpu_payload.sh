#!/usr/bin/env bash
# (Re)creates .gpu/wheels/ on a CPU machine with registry access, and checks the rest of .gpu/.
#
#   bash benchmarks/gpu_payload.sh
#
# .gpu/ (ignored by git) travels with the checkout to the GPU machine, which has no internet
# (benchmarks/gpu_check.sh uses it; benchmarks/README.md "GPU" says how each part was made):
#   .gpu/device/   the llama-cpp-python 0.3.36 CUDA wheel (sm_90), its installer and small deps:
#                  built on a CPU machine with the CUDA toolkit (benchmarks/README.md, "GPU payload")
#   .gpu/sdist/    llama-cpp-python's sdist repacked without vendored vocabularies and docs (amx stage)
#   .gpu/wheels/   made here: the pure-Python wheels modelfix and its tests import that the GPU
#                  image lacks or has too old (its huggingface_hub is 1.33; modelfix needs >= 2.0)
#   .gpu/gemma/    optional: the four chunk files of Gemma 3 270M Q4_K_M, carried over several calls
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.gpu/wheels
PY=${PY:-.venv/bin/python}
# What the GPU image (/work/.library/device/KINDS.md) lacks or holds too old; the rest
# (fsspec, filelock, xxhash, tqdm, pluggy, pytest, numpy, nvidia-ml-py, anyio, h11, idna, pyyaml) is
# there. huggingface_hub 2.x talks HTTP through httpx2/httpcore2 (not the image's httpx), which
# modelfix's transports use too; truststore is theirs; click >= 8.4.2 is huggingface_hub's.
# The versions are this checkout's own (.venv), the ones its tests ran with.
NAMES=(huggingface_hub httpx2 httpcore2 truststore click tomlkit tomli platformdirs gguf)
mapfile -t NEED < <("$PY" -c 'import sys
from importlib.metadata import version
print("\n".join(f"{n}=={version(n)}" for n in sys.argv[1:]))' "${NAMES[@]}")
rm -rf "$WHEELS.new" && mkdir -p "$WHEELS.new"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$WHEELS.new" "${NEED[@]}"
rm -rf "$WHEELS" && mv "$WHEELS.new" "$WHEELS"
ls -1 "$WHEELS"
missing=0
[ -f .gpu/device/INSTALL-ON-DEVICE.sh ] || { echo "missing .gpu/device: build it as benchmarks/README.md "GPU payload" says"; missing=1; }
ls .gpu/sdist/*.tar.gz > /dev/null 2>&1 || { echo "missing .gpu/sdist: repack it as benchmarks/README.md "GPU payload" says"; missing=1; }
du -sh .gpu/* 2>/dev/null
echo "what travels (64 MiB at most; keep .gpu/gemma out of the main run's carry): the tracked files, then .gpu"
git ls-files -z | du -ch --files0-from=- 2>/dev/null | tail -1
du -sch .gpu/device .gpu/sdist "$WHEELS" 2>/dev/null | tail -1
exit $missing

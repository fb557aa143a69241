#!/usr/bin/env bash
# Install torch into $PYTHON's environment (default: python), picking the build:
#   1. already importable: nothing to do;
#   2. the local pip configuration serves torch==$TORCH_VERSION without network (CI machines
#      keep a CPU wheel on local disk): install that;
#   3. an NVIDIA GPU answers nvidia-smi: the default build from PyPI (CUDA);
#   4. otherwise the CPU build from PyTorch's CPU wheel index (a bare `pip install torch`
#      would pull the multi-GB CUDA build onto a machine that cannot use it).
# TORCH_VERSION (default 2.13.0, the version the tests run on) and TORCH_INDEX_URL override.
set -euo pipefail
PYTHON=${PYTHON:-python}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
CPU_INDEX=${TORCH_CPU_INDEX_URL:-https://download.pytorch.org/whl/cpu}
say() { echo "install-torch: $*"; }

if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
  say "torch $("$PYTHON" -c 'import torch; print(torch.__version__)') is already installed"
  exit 0
fi
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  say "torch==$TORCH_VERSION from $TORCH_INDEX_URL"
  exec "$PYTHON" -m pip install -q "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
fi
# Offline: only the local part of the pip configuration (find-links, file:// indexes), network
# indexes left out. A --dry-run resolves torch and its dependencies there, downloading nothing:
# it succeeds exactly when an offline install would.
local=(--no-index)
mapfile -t file_indexes < <("$PYTHON" -m pip config list 2>/dev/null | grep -i 'index-url' \
                             | grep -o "file://[^ '\"]*" || true)
if [ ${#file_indexes[@]} -gt 0 ]; then
  local=(--index-url "${file_indexes[0]}")
  for url in "${file_indexes[@]:1}"; do local+=(--extra-index-url "$url"); done
fi
if "$PYTHON" -m pip install -q --dry-run "${local[@]}" "torch==$TORCH_VERSION" >/dev/null 2>&1; then
  say "torch==$TORCH_VERSION from the local pip configuration (no network)"
  exec "$PYTHON" -m pip install -q "${local[@]}" "torch==$TORCH_VERSION"
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  say "NVIDIA GPU found: torch==$TORCH_VERSION, default (CUDA) build"
  exec "$PYTHON" -m pip install -q "torch==$TORCH_VERSION"
fi
say "no NVIDIA GPU: torch==$TORCH_VERSION, CPU build from $CPU_INDEX"
if ! "$PYTHON" -m pip install -q "torch==$TORCH_VERSION" --index-url "$CPU_INDEX"; then
  # The CPU index unreachable (a mirror-only network): whatever pip's own configuration serves.
  say "$CPU_INDEX did not answer: torch==$TORCH_VERSION as pip is configured"
  exec "$PYTHON" -m pip install -q "torch==$TORCH_VERSION"
fi

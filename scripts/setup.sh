#!/usr/bin/env bash
# One-shot set-up on a fresh machine: a virtual environment in .venv with vmiseq, its
# training, transformers/timm and test extras, and (when apt-get is usable) the Fashion-MNIST package that
# experiments/imagenet.py uses as its built-in default data set.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch and torchvision pinned as a pair that imports together (CPU or CUDA machines).
.venv/bin/python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install -q -e ".[train,hf,timm,dev,fast]"
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
      || echo "note: could not install dataset-fashion-mnist; experiments/imagenet.py needs --data then"
  else
    echo "note: for the built-in image data set run: sudo apt-get install dataset-fashion-mnist"
  fi
fi
echo "vmiseq is set up in .venv"

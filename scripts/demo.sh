#!/usr/bin/env bash
# Quick start: create .venv, install needle with the training extras, train MLPResNet on the
# MNIST data shipped inside the package (about a minute on 2 cores, offline once installed).
# Extra arguments go to `needle train`, e.g. `bash scripts/demo.sh --epochs 3`.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv train "tqdm matplotlib safetensors"
exec "$ROOT/.venv/bin/needle" train --out runs/demo "$@"

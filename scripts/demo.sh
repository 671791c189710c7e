#!/usr/bin/env bash
# Quick start: create .venv, install needle with the training extras, train MLPResNet on the
# MNIST data shipped inside the package (about a minute on 2 cores, offline once installed).
# Extra arguments go to `needle train`, e.g. `bash scripts/demo.sh --epochs 3`.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv train "matplotlib safetensors"
# One BLAS thread unless the caller chose: the demo's matmuls are small. Measured on the
# 2-core x86_64 machine (benchmarks/RESULTS.md, "BLAS threads"): under load an epoch took 4 s
# with 1 thread and 35 s with 2; on a quiet machine (2026-12-02, load average 1.3,
# `needle train --epochs 2`) 0.6-1.0 s per epoch with either.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
exec "$ROOT/.venv/bin/needle" train --out runs/demo "$@"

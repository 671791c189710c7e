#!/usr/bin/env bash
# Create .venv, install needle with the test extras (PyTorch 2.13.0, CPU wheel, as the oracle)
# and run the test suite without the slow tests. Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv test "pytest hypothesis torch matplotlib tensorboardX safetensors mpi4py threadpoolctl nvidia.cuda_nvrtc nvidia.cuda_nvcc onnx onnxruntime"
# One BLAS thread per process: the MPI tests start two processes on two cores, and small
# matmuls run no faster with more threads.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}"
exec "$VPY" -m pytest -q -m "not slow" "$@"

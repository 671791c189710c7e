#!/usr/bin/env bash
# Create .venv, install needle with the test extras (PyTorch 2.13.0, CPU wheel, as the oracle)
# and run the test suite without the slow tests. Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
ensure_venv test "pytest hypothesis torch tqdm matplotlib safetensors" \
    --extra-index-url https://download.pytorch.org/whl/cpu
exec "$VPY" -m pytest -q -m "not slow" "$@"

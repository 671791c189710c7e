# Shared by demo.sh and test.sh: make .venv once, install needle (editable) with an extra only
# when something it needs is missing, so a second run starts at once.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VPY="$ROOT/.venv/bin/python"

ensure_venv() {  # ensure_venv EXTRA "python modules to check" [pip args...]
    local extra="$1" modules="$2"
    shift 2
    if [ ! -x "$VPY" ]; then
        "${PYTHON:-python3}" -m venv "$ROOT/.venv"
    fi
    if ! (cd / && "$VPY" - "$ROOT" $modules >/dev/null 2>&1 <<'PY'
import importlib, os, sys
root = os.path.realpath(sys.argv[1])
for name in sys.argv[2:]:
    importlib.import_module(name)
import needle
sys.exit(0 if os.path.realpath(needle.__file__).startswith(root) else 1)
PY
    ); then
        echo "installing needle[$extra] into .venv ..." >&2
        "$VPY" -m pip install -q -e ".[$extra]" "$@"
    fi
}

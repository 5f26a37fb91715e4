# Sourced by serve.sh and test.sh: a virtual environment with quotaflow installed in it.
# Usage: QF_EXTRAS=test . scripts/bootstrap.sh   (from the repository root; extras optional)
set -eu
QF_EXTRAS="${QF_EXTRAS:-}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    if ! "$PY" -m venv .venv 2>/dev/null; then
        # Debian's python3 ships venv separately.
        echo "bootstrap: installing python3-venv" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        rm -rf .venv
        "$PY" -m venv .venv
    fi
fi
STAMP=".venv/.quotaflow-installed${QF_EXTRAS:+-$QF_EXTRAS}"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    if [ -n "$QF_EXTRAS" ]; then
        .venv/bin/python -m pip install -q -e ".[$QF_EXTRAS]"
    else
        .venv/bin/python -m pip install -q -e .
    fi
    touch "$STAMP"
fi

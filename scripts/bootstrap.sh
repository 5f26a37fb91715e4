# Sourced by serve.sh and test.sh: a virtual environment with quotaflow installed in it, its hot
# path compiled by mypyc (QUOTAFLOW_NATIVE=0: interpreted only).
# Usage: QF_EXTRAS=test . scripts/bootstrap.sh   (from the repository root; extras optional)
set -eu
QF_EXTRAS="${QF_EXTRAS:-}"
PY="${PYTHON:-python3}"
apt_install() {
    echo "bootstrap: installing $*" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
if [ ! -x .venv/bin/python ]; then
    if ! "$PY" -m venv .venv 2>/dev/null; then
        apt_install python3-venv  # Debian's python3 ships venv separately
        rm -rf .venv
        "$PY" -m venv .venv
    fi
fi
STAMP=".venv/.quotaflow-installed${QF_EXTRAS:+-$QF_EXTRAS}"
fresh() { [ -f "$1" ] && [ ! pyproject.toml -nt "$1" ] && [ ! setup.py -nt "$1" ]; }
# An install with the test extras serves the server too: no reinstall (and no recompiling)
# when serve.sh follows test.sh.
if ! fresh "$STAMP" && { [ -n "$QF_EXTRAS" ] || ! fresh .venv/.quotaflow-installed-test; }; then
    .venv/bin/python -m pip install -q --upgrade pip
    # The build tools, in the venv: mypyc must see the installed dependencies' types.
    .venv/bin/python -m pip install -q "setuptools>=77" "mypy==2.4.1"
    QUOTAFLOW_NATIVE=0 .venv/bin/python -m pip install -q --no-build-isolation -e ".${QF_EXTRAS:+[$QF_EXTRAS]}"
    touch "$STAMP"
fi
# Compile when a compiled module's source changed since the last build (or none was made).
if [ "${QUOTAFLOW_NATIVE:-1}" != 0 ] \
    && ! .venv/bin/python -c 'import quotaflow, sys; sys.exit(quotaflow.NATIVE_MODE != "compiled")'; then
    if ! command -v gcc >/dev/null 2>&1 \
        || ! .venv/bin/python -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
        apt_install python3-dev gcc || true
    fi
    echo "bootstrap: compiling the hot path with mypyc (about 2 minutes)" >&2
    if ! QUOTAFLOW_NATIVE=1 .venv/bin/python -m pip install -q --no-build-isolation --no-deps -e .; then
        # Still a working install: the same code, interpreted (tests/core/test_native.py fails).
        echo "bootstrap: compiling failed; quotaflow runs interpreted" >&2
        QUOTAFLOW_NATIVE=0 .venv/bin/python -m pip install -q --no-build-isolation --no-deps -e .
    fi
fi

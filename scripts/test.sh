#!/bin/sh
# The whole check: Debian peers the tests talk to, lint, types, then every test.
# Extra arguments go to pytest (e.g. tests/core -k crash).
set -eu
cd "$(dirname "$0")/.."
need=""
command -v tshark >/dev/null 2>&1 || need="$need tshark"
{ command -v freeDiameterd && ls /usr/lib/freeDiameter/dict_dcca_3gpp.fdx; } >/dev/null 2>&1 || need="$need freediameter"
command -v h2load >/dev/null 2>&1 || need="$need nghttp2-client"
command -v radclient >/dev/null 2>&1 || need="$need freeradius-utils"
command -v openssl >/dev/null 2>&1 || need="$need openssl"
command -v curl >/dev/null 2>&1 || need="$need curl"
if [ -n "$need" ]; then
    echo "test: installing Debian packages:$need" >&2
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need >/dev/null
fi
QF_EXTRAS=test . scripts/bootstrap.sh
echo "== ruff" >&2
.venv/bin/ruff check src tests bench setup.py
echo "== mypy" >&2
.venv/bin/mypy
echo "== pytest" >&2
exec .venv/bin/python -m pytest -q "$@"

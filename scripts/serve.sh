#!/bin/sh
# Start quotaflow on the embedded default: ledger in ./quotaflow-data, HTTP on 127.0.0.1:8080,
# Diameter on 127.0.0.1:3868. Extra arguments go to `quotaflow serve` (see --help).
set -eu
cd "$(dirname "$0")/.."
. scripts/bootstrap.sh
exec .venv/bin/quotaflow serve "$@"

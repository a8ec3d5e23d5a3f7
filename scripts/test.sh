#!/usr/bin/env bash
# Runs the test suite, setting up .venv first if needed. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec "${TLFLAX_VENV:-.venv}/bin/python" -m pytest "$@"

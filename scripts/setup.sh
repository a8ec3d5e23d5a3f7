#!/usr/bin/env bash
# Creates .venv and installs tlflax with its test extra; re-installs only when pyproject.toml changes.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${TLFLAX_VENV:-.venv}"
stamp="$venv/.tlflax-installed"
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  echo "Setting up $venv (first run, or pyproject.toml changed): a few minutes..." >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e '.[test]'
  echo "$wanted" > "$stamp"
fi

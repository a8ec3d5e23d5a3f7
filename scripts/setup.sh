#!/usr/bin/env bash
# Creates .venv and installs tlflax with its test extra and the JAX build for this machine's
# accelerator; re-installs only when pyproject.toml or the platform changes.
#   TLFLAX_PLATFORM=cpu|cuda|cuda12|cuda13|tpu  (default: cuda where nvidia-smi lists a GPU, tpu
#                                               where /dev/accel* exists, else cpu; cuda picks
#                                               cuda13 or cuda12 from the driver)
#   TLFLAX_VENV=DIR                             (default: .venv)
#   TLFLAX_SETUP_DRY_RUN=print                  only print the platform and the pip extras
#   TLFLAX_SETUP_DRY_RUN=1                      only resolve and print what pip would install
#                                               (creating the venv if it is missing)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${TLFLAX_VENV:-.venv}"
platform="${TLFLAX_PLATFORM:-}"
nvidia_smi() { timeout 20 nvidia-smi "$@" 2>/dev/null || true; }
if [ -z "$platform" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia_smi -L | grep GPU >/dev/null; then
    platform=cuda
  elif compgen -G '/dev/accel*' >/dev/null; then
    platform=tpu
  else
    platform=cpu
  fi
fi
if [ "$platform" = cuda ]; then  # the newest CUDA the driver supports; 12 where it does not say
  driver_cuda="$(nvidia_smi | sed -n 's/.*CUDA Version: *\([0-9]*\).*/\1/p' | head -n1)"
  if [ "${driver_cuda:-12}" -ge 13 ]; then platform=cuda13; else platform=cuda12; fi
fi
case "$platform" in
  cpu) extras=test ;;
  cuda12|cuda13|tpu) extras="test,$platform" ;;
  *) echo "TLFLAX_PLATFORM must be cpu, cuda, cuda12, cuda13 or tpu, not '$platform'" >&2; exit 2 ;;
esac
if [ -n "${TLFLAX_SETUP_DRY_RUN:-}" ]; then
  echo "TLFLAX_PLATFORM=$platform: pip install -e .[$extras]"
  if [ "$TLFLAX_SETUP_DRY_RUN" = print ]; then exit 0; fi
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  exec "$venv/bin/python" -m pip install --dry-run -e ".[$extras]"
fi
stamp="$venv/.tlflax-installed"
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1) $extras"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  echo "Setting up $venv for $platform (first run, or pyproject.toml or the platform changed):" \
       "a few minutes..." >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  installed_extras="$(cut -s -d' ' -f2 "$stamp" 2>/dev/null || true)"
  if [ -n "$installed_extras" ] && [ "$installed_extras" != "$extras" ]; then
    # another platform's JAX plugins would stay installed, and JAX would still load them
    "$venv/bin/python" -m pip uninstall --quiet --yes jax-cuda12-plugin jax-cuda12-pjrt \
        jax-cuda13-plugin jax-cuda13-pjrt libtpu 2>/dev/null || true
  fi
  "$venv/bin/python" -m pip install --quiet -e ".[$extras]"
  echo "$wanted" > "$stamp"
fi

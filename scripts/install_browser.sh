#!/usr/bin/env bash
# Installs headless Chromium and its WebDriver (Debian/Ubuntu packages) for the report tests,
# which load each HTML report in a real browser; they skip without it (and fail under CI=true).
# Needs root or sudo. Does nothing where both are installed.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
packages=(chromium chromium-driver fonts-dejavu-core)
apt=(apt-get)
[ "$(id -u)" = 0 ] || apt=(sudo -n apt-get)
export DEBIAN_FRONTEND=noninteractive
"${apt[@]}" install -y -qq --no-install-recommends "${packages[@]}" \
  || { "${apt[@]}" update -qq && "${apt[@]}" install -y -qq --no-install-recommends "${packages[@]}"; }

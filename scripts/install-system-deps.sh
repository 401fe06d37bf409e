#!/usr/bin/env bash
# Installs the Debian packages cxr-audit needs, only when one is missing (quick when all are there):
# Pango/HarfBuzz for weasyprint's PDF rendering, fonts so text never renders as squares, poppler-utils
# for checking rendered PDFs (pdftotext, pdftoppm), chromium and its driver for the reader-study form's browser
# test.
set -euo pipefail

packages=(libpango-1.0-0 libpangoft2-1.0-0 libharfbuzz-subset0 fonts-dejavu-core fonts-liberation poppler-utils
          chromium chromium-driver)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi

echo "Installing Debian packages: ${missing[*]}"
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null; then
    sudo=sudo
  else
    echo "error: need root (or sudo) to run: apt-get install -y ${missing[*]}" >&2
    exit 2
  fi
fi
export DEBIAN_FRONTEND=noninteractive
${sudo:-} apt-get update -qq
${sudo:-} apt-get install -y -qq --no-install-recommends "${missing[@]}"

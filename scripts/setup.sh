#!/usr/bin/env bash
# Installs everything the demo and the tests need: redis-server (Debian package),
# a virtualenv in .venv with the project and its dev tools, and, for the tests, openssl (a
# certificate for a TLS redis-server), jq (the shell agents of docs/worker.md), promtool
# (Debian package prometheus), Chromium (Debian packages chromium and chromium-driver, driven
# by Playwright in the console's browser tests; no browser download) and helm in .tools/bin.
# `--demo` installs only what the demo runs: the project with its `demo` extra (the command
# line, the worker and the console), no dev tools.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
for_tests=1
[ "${1:-}" = "--demo" ] && for_tests=0

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# redis-cli (Debian package redis-tools) joins the tests' Redis Cluster nodes.
if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    echo "setup: installing redis-server and redis-tools"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools \
        >/dev/null
    # The tests and the demo start their own redis-server; the packaged service is not needed.
    as_root systemctl disable --now redis-server >/dev/null 2>&1 || true
fi

if [ "$for_tests" = 1 ] && ! command -v openssl >/dev/null 2>&1; then
    echo "setup: installing openssl (a certificate for the TLS tests' redis-server)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
fi

if [ "$for_tests" = 1 ] && ! command -v jq >/dev/null 2>&1; then
    echo "setup: installing jq (the shell agents of docs/worker.md, run as written)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null
fi

if [ "$for_tests" = 1 ] && ! command -v promtool >/dev/null 2>&1; then
    echo "setup: installing promtool (Debian package prometheus) to check alert rules"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        prometheus >/dev/null
    as_root systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

if [ "$for_tests" = 1 ] && ! command -v chromium >/dev/null 2>&1; then
    echo "setup: installing chromium (Debian package) for the console's browser tests"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver \
        >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "setup: $PYTHON is not Python 3.11 or later; set PYTHON to one (e.g. PYTHON=python3.12)" >&2
    exit 1
fi
# Debian and Ubuntu ship venv's pip bootstrap apart (python3-venv): without it `-m venv`
# fails half-way, leaving a .venv without pip behind.
if ! .venv/bin/python -c 'import pip' 2>/dev/null && ! "$PYTHON" -c 'import ensurepip' 2>/dev/null; then
    echo "setup: installing python3-venv (venv's pip for $PYTHON)"
    as_root apt-get update -qq
    version=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${version}-venv" \
        >/dev/null 2>&1 \
        || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
elif ! .venv/bin/python -c 'import pip' 2>/dev/null; then
    echo "setup: adding pip to .venv (made without it, or half-made)"
    .venv/bin/python -m ensurepip --upgrade >/dev/null
fi

# pip with its full output in .venv/setup.log and a short account of its progress on the
# terminal: one line that counts the packages as they resolve (every tenth when not a tty).
pip_with_progress() {
    local count=0 status=1 line name
    while IFS= read -r line; do
        case "$line" in
            "pip-exit-status "*) status=${line#pip-exit-status }; continue ;;
        esac
        printf '%s\n' "$line" >> .venv/setup.log
        case "$line" in
            Collecting*)
                count=$((count + 1)); name=${line#Collecting }; name=${name%%[ <>=\[]*}
                if [ -t 1 ]; then
                    printf '\rsetup:   %d packages resolved (%s)\033[K' "$count" "$name"
                elif [ $((count % 10)) = 0 ]; then
                    echo "setup:   $count packages resolved ($name)"
                fi ;;
            "Installing collected packages: "*)
                [ -t 1 ] && [ "$count" -gt 0 ] && printf '\n'
                name=${line#Installing collected packages: }
                echo "setup:   installing $(tr ',' '\n' <<< "$name" | wc -l) packages" ;;
            "Successfully installed"*) echo "setup:   installed" ;;
        esac
    done < <("$@" 2>&1; echo "pip-exit-status $?")
    return "$status"
}

extra=dev
[ "$for_tests" = 0 ] && extra=demo
hash="$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)"
# A dev install holds everything the demo needs, so it serves both.
if [ ! -f ".venv/.setup-dev-$hash" ] && [ ! -f ".venv/.setup-$extra-$hash" ]; then
    echo "setup: installing agentpool[$extra] into .venv (about a minute; log: .venv/setup.log)"
    : > .venv/setup.log
    if ! { .venv/bin/python -m pip install -q --upgrade pip >> .venv/setup.log 2>&1 &&
           pip_with_progress .venv/bin/python -m pip install -c constraints.txt -e ".[$extra]"; }; then
        tail -n 30 .venv/setup.log
        echo "setup: pip install failed (full log: .venv/setup.log)" >&2
        exit 1
    fi
    rm -f .venv/.setup-*
    touch ".venv/.setup-$extra-$hash"
fi

if [ "$for_tests" = 1 ]; then
    bash scripts/install-helm.sh
fi

#!/usr/bin/env bash
# Make sure redis-server is on PATH: the tests and the demo start their own.
# Installs it with apt-get when running as root; otherwise says how.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "redis-server not found; installing it with apt-get ..." >&2
    if apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; then
        exit 0
    fi
fi
echo "smsq: redis-server is not installed; install it (Debian/Ubuntu: sudo apt-get install redis-server, macOS: brew install redis) and run this again" >&2
exit 2

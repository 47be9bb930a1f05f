#!/usr/bin/env bash
# Create the virtual environment and install smsq with its development extras.
# Usage: ops/bootstrap.sh PYTHON VENV
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}

if ! command -v "$python" >/dev/null 2>&1; then
    echo "smsq: $python not found; install Python 3.11 or newer (or run make PYTHON=/path/to/python3)" >&2
    exit 2
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "smsq: $python is $("$python" -V 2>&1); smsq needs Python 3.11 or newer" >&2
    exit 2
fi
if [ ! -x "$venv/bin/python" ]; then
    if ! "$python" -m venv "$venv" >/dev/null 2>&1; then
        echo "smsq: cannot create a virtual environment; install the venv module (Debian: apt-get install python3-venv)" >&2
        exit 2
    fi
fi
echo "installing smsq and its development tools into $venv ..." >&2
# The exact versions the tests ran with, checked against their hashes (make lock writes the
# lock from pyproject.toml); then smsq itself, editable, adding nothing else.
if ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes \
        -r requirements-dev.lock \
    || ! "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e .; then
    echo "smsq: pip could not install the dependencies (is the package index reachable?)" >&2
    exit 2
fi

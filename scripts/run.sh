#!/usr/bin/env bash
# Set up (first run) and start the whole tunelab platform on embedded defaults:
# SQLite metadata, a local-directory object store and a Redis server of its own,
# with the API, a CPU worker and a GPU worker. Ctrl-C stops everything.
#   TUNELAB_VENV      virtualenv to use (default: .venv in the checkout)
#   TUNELAB_DATA_DIR  where data lives (default: ~/.local/share/tunelab)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${TUNELAB_VENV:-.venv}"
python="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[gpu]'
exec "$venv/bin/tunelab" up

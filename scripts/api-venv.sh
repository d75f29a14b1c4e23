#!/usr/bin/env bash
# Make (once) a virtualenv with tunelab's base install only, as the API and CPU-worker
# image has it (no `gpu` extra: no torch, no transformers), and print its interpreter.
# The tests run an API from it to show that chats are served without the GPU stack.
# Its packages are cached outside the checkout; the checkout itself is linked in anew.
#   TUNELAB_API_VENV  where (default: ~/.cache/tunelab/api-venv)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${TUNELAB_API_VENV:-$HOME/.cache/tunelab/api-venv}"
python="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e . >&2
if "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
  echo "$venv has torch: it must hold the base install only" >&2
  exit 1
fi
echo "$venv/bin/python"

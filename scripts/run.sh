#!/usr/bin/env bash
# Set up (first run) and start the whole tunelab platform on embedded defaults:
# SQLite metadata, a local-directory object store and a Redis server of its own,
# with the API, a CPU worker and a GPU worker. Ctrl-C stops everything.
#   TUNELAB_VENV      virtualenv to use (default: .venv in the checkout)
#   TUNELAB_DATA_DIR  where data lives (default: ~/.local/share/tunelab)
#   TUNELAB_SERVING_ENGINE=transformers  skip building vLLM's environment (~3 min,
#                     2.5 GB) and serve with the slower in-process fallback
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${TUNELAB_VENV:-.venv}"
python="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[gpu]'
if [ "${TUNELAB_SERVING_ENGINE:-auto}" != transformers ] && [ -z "${TUNELAB_VLLM_PYTHON:-}" ]; then
  TUNELAB_VLLM_PYTHON="$(bash scripts/vllm-venv.sh)"
  export TUNELAB_VLLM_PYTHON
fi
exec "$venv/bin/tunelab" up

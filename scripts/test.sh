#!/usr/bin/env bash
# Set up and run the whole test suite: lint, type check, then pytest. The tests use
# Redis, PostgreSQL and an S3 server on loopback, starting those that are not
# reachable (see tests/services.py). Extra arguments go to pytest.
#   TUNELAB_VENV  virtualenv to use (default: .venv in the checkout)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${TUNELAB_VENV:-.venv}"
python="${PYTHON:-python3}"

# A machine without PostgreSQL's server binaries gets Debian's (root and apt only).
if ! command -v pg_ctl >/dev/null && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get install -y -q postgresql >/dev/null || { apt-get update -q && apt-get install -y -q postgresql; }
fi

# The browser tests drive Debian's chromium (never a browser Playwright downloads), with
# a CJK font so that the Chinese pages' screenshots show Chinese.
if { ! [ -x /usr/bin/chromium ] || ! fc-list :lang=zh 2>/dev/null | grep -q .; } \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  packages="chromium fonts-wqy-microhei"
  apt-get install -y -q $packages >/dev/null || { apt-get update -q && apt-get install -y -q $packages; }
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e '.[test,gpu]'
# vLLM serves the deployed models in the serving tests; it lives in a virtualenv of its
# own, cached outside the checkout.
TUNELAB_TEST_VLLM_PYTHON="${TUNELAB_TEST_VLLM_PYTHON:-$(bash scripts/vllm-venv.sh)}"
export TUNELAB_TEST_VLLM_PYTHON
# An MLflow tracking server for the tracking test, in a virtualenv of its own too.
TUNELAB_TEST_MLFLOW_PYTHON="${TUNELAB_TEST_MLFLOW_PYTHON:-$(bash scripts/mlflow-venv.sh)}"
export TUNELAB_TEST_MLFLOW_PYTHON
# The API without the `gpu` extra, as its image has it (the Kubernetes chat test).
TUNELAB_TEST_API_PYTHON="${TUNELAB_TEST_API_PYTHON:-$(bash scripts/api-venv.sh)}"
export TUNELAB_TEST_API_PYTHON

echo "== ruff"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .

echo "== mypy"
"$venv/bin/mypy" -p tunelab

echo "== import contracts"
"$venv/bin/lint-imports"

echo "== pytest"
"$venv/bin/python" -m pytest "$@"

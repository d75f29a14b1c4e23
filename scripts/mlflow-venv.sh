#!/usr/bin/env bash
# Make (once) a virtualenv with an MLflow tracking server and print its interpreter's
# path. The tracking tests start `mlflow server` from it on loopback; the server's
# stack (scikit-learn, matplotlib, its own pyarrow) stays out of tunelab's environment,
# which has only the client (mlflow-skinny). It lives outside the checkout, so CI
# builds it once per version.
#   TUNELAB_MLFLOW_VENV  where (default: ~/.cache/tunelab/mlflow-<version>)
set -euo pipefail
version="3.17.2"
venv="${TUNELAB_MLFLOW_VENV:-$HOME/.cache/tunelab/mlflow-$version}"
python="${PYTHON:-python3}"
if ! "$venv/bin/python" -c "import mlflow.server" >/dev/null 2>&1; then
  echo "== building an MLflow $version environment in $venv (about a minute, once)" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "mlflow==$version" >&2
  "$venv/bin/python" -c "import mlflow.server" >&2
fi
echo "$venv/bin/python"

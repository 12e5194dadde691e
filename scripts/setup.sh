#!/usr/bin/env bash
# Bootstraps libtorch for the build: a venv in the repo (.venv, git-ignored) with
# torch==2.11.0 from the Python package index (the +cu130 wheel; its CPU part
# runs on machines without a GPU), and a link .libtorch -> its torch folder,
# which .cargo/config.toml hands to tch's build. Idempotent: a second run only
# checks and takes a second or two.
#
# Also installs the pinned Python packages of the NVFP4 interop checks
# (compressed-tensors, transformers, nvidia-modelopt), which a test runs.
# Optional: EXTRA_PY="..." installs further Python packages.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
want="2.11.0"
py="${PYTHON:-python3}"

venv_python=".venv/bin/python"
if [ ! -x "$venv_python" ]; then
    echo "setup: creating .venv with $($py --version 2>&1)"
    "$py" -m venv .venv
fi

have="$("$venv_python" -c 'import torch, sys; sys.stdout.write(torch.__version__)' 2>/dev/null || true)"
if [ "${have%%+*}" != "$want" ]; then
    echo "setup: installing torch==$want into .venv (about a minute, ~4.6 GB)"
    "$venv_python" -m pip install --quiet --disable-pip-version-check "torch==$want" numpy
    have="$("$venv_python" -c 'import torch, sys; sys.stdout.write(torch.__version__)')"
fi
# The independent Python readers the interop tests spawn
# (scripts/check_nvfp4_export.py via crates/qwen3-model/tests/nvfp4_layouts.rs):
# exact pins, installed only when a version differs (a second run checks in ~1 s).
# `requests` is imported by nvidia-modelopt without being declared.
interop_pins="compressed-tensors==0.20.1 transformers==5.24.0 nvidia-modelopt==0.47.0 requests==2.34.2"
# shellcheck disable=SC2086
if ! "$venv_python" - $interop_pins >/dev/null 2>&1 <<'EOF'
import sys, importlib.metadata as m
sys.exit(any(m.version(p.split("==")[0]) != p.split("==")[1] for p in sys.argv[1:]))
EOF
then
    echo "setup: installing $interop_pins into .venv"
    # shellcheck disable=SC2086
    "$venv_python" -m pip install --quiet --disable-pip-version-check $interop_pins
fi
if [ -n "${EXTRA_PY:-}" ]; then
    # shellcheck disable=SC2086
    "$venv_python" -m pip install --quiet --disable-pip-version-check $EXTRA_PY
fi

# The CUDA C runtime and CCCL headers that libtorch's ProcessGroupNCCL.hpp needs
# (crates/distributed compiles against it); header-only wheels, matching CUDA 13.0.
nvidia_include="$("$venv_python" -c 'import os, torch; print(os.path.join(os.path.dirname(os.path.dirname(torch.__file__)), "nvidia", "cu13", "include"))')"
if [ ! -f "$nvidia_include/crt/host_config.h" ] || [ ! -e "$nvidia_include/nv/target" ]; then
    echo "setup: installing the CUDA 13.0 crt and CCCL headers into .venv"
    "$venv_python" -m pip install --quiet --disable-pip-version-check "nvidia-cuda-crt==13.0.*" "nvidia-cuda-cccl==13.0.*"
fi

torch_dir="$("$venv_python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')"
ln -sfn "$torch_dir" .libtorch
[ -f .libtorch/lib/libtorch_cpu.so ] || { echo "setup: $torch_dir has no lib/libtorch_cpu.so" >&2; exit 1; }
echo "setup: libtorch $have at .libtorch -> $torch_dir"

#!/usr/bin/env bash
# Bootstraps libtorch for the build: a venv in the repo (.venv, git-ignored) with
# torch==2.11.0 from the Python package index (the +cu130 wheel; its CPU part
# runs on machines without a GPU), and a link .libtorch -> its torch folder,
# which .cargo/config.toml hands to tch's build. Idempotent: a second run only
# checks and takes a second or two.
#
# Optional: EXTRA_PY="transformers==..." also installs Python packages needed by
# the fixture generators (scripts/gen_*.py); the tests never need them.
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

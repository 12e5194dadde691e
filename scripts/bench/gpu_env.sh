# Sourced by the GPU-machine scripts: the repo root as the working directory,
# $OUT for what comes back, and the library path of the machine's torch and
# NVRTC that the bundled binaries (built here against the same libtorch) load.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
torch_lib=/opt/torch/.venv/lib/python3.12/site-packages/torch/lib
nvrtc_dir="$(dirname "$(find /opt/torch/.venv /usr/local/cuda* -name 'libnvrtc.so*' 2>/dev/null | head -1)")"
export LD_LIBRARY_PATH="$torch_lib:$nvrtc_dir:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"

#!/usr/bin/env bash
# Issue 14's table in one run on the GPU machine: this project's QAT training
# step (full-size Qwen3-4B config, random weights, seq 2048) with bf16 master
# and moments at batch 1 and 4, activation checkpointing on and off, plus the
# f32-master and 8-bit-moment options; then transformers eager and
# transformers + Liger kernels, with and without checkpointing, by
# scripts/bench/train_baselines.py. Every row is its own process (its own
# peak). Build here first:
#   scripts/gpu_bundle.sh --benches full_size
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl liger-kernel==0.8.5
# then run(command="bash scripts/bench/train_speed.sh", carry=[".gpu-bundle", ".whl"]).
# Results: $OUT/train_speed.jsonl (every row), $OUT/train_speed.log.
# Env: TRAIN_SPECS (our rows, master,moments,batch,seq,checkpointing),
# AUTOGRAD_SPECS (rows through the autograd blocks), BASELINE_ROWS (a subset
# of train_baselines.py's rows, or "none"), ROW_LIMIT / BASELINE_LIMIT (s).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/gpu_env.sh"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
export FULL_SIZE_DIR=/tmp/qwen3-4b-random
cfg=crates/tokenizer-bridge/assets/qwen3/config.json
bin=.gpu-bundle/bin/bench-full_size
json="$OUT/train_speed.jsonl"; log="$OUT/train_speed.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
row_limit="${ROW_LIMIT:-75}"
ours() { # row-name spec [env assignments...]: one row of this project, its own process
    local row="$1" spec="$2"; shift 2
    echo "== ours ($row): train $spec" | tee -a "$log"
    env "$@" FULL_SIZE_TRAIN="$spec" FULL_SIZE_SKIP=decode,prefill,nvfp4_head timeout "$row_limit" "$bin" 2>&1 |
        tee -a "$log" | grep -E '^\{.*train_step' | sed "s/^{/{\"row\": \"$row\", /" >> "$json" \
        || echo "{\"system\": \"qwen3-nvfp4\", \"row\": \"$row\", \"metric\": \"train_step\", \"spec\": \"$spec\", \"error\": \"failed or timed out\"}" >> "$json"
}
for spec in ${TRAIN_SPECS:-bf16,bf16,1,2048,off bf16,bf16,4,2048,off bf16,bf16,1,2048,on bf16,bf16,4,2048,on f32,f32,4,2048,auto bf16,int8,4,2048,auto}; do
    ours "written-out blocks" "$spec"
done
# The same step with the blocks and loss through autograd (the reference
# path): what the written-out blocks bought.
for spec in ${AUTOGRAD_SPECS:-}; do
    ours "autograd blocks" "$spec" NVFP4_AUTOGRAD_BLOCKS=1
done
echo "== baselines: transformers eager and + Liger" | tee -a "$log"
[ "${BASELINE_ROWS:-}" = none ] || PYTHONUNBUFFERED=1 python3 scripts/bench/train_baselines.py --config "$cfg" \
    ${BASELINE_ROWS:+--rows "$BASELINE_ROWS"} --timeout "${BASELINE_LIMIT:-100}" 2>>"$log" | tee -a "$json"
cat "$json"

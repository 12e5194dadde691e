#!/usr/bin/env bash
# Issue 7's one-run table: this project and the Hugging Face baseline, same card,
# same config (Qwen3-4B, random weights), one run. On the GPU machine, after
#   scripts/gpu_bundle.sh --benches full_size --examples stress   (here)
# send the repo with carry [".gpu-bundle"] and run:  bash scripts/bench/full_size.sh
# Results: $OUT/full_size.jsonl (raw), $OUT/full_size.md (table), $OUT/stress.txt.
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/gpu_env.sh"
export FULL_SIZE_DIR=/tmp/qwen3-4b-random
cfg=crates/tokenizer-bridge/assets/qwen3/config.json
bin=.gpu-bundle/bin/bench-full_size
log="$OUT/full_size.jsonl"
: > "$log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

echo "== ours: load, memory, decode, prefill"
"$bin" | tee -a "$log"
for spec in ${TRAIN_SPECS:-f32,f32,1 bf16,bf16,1 bf16,int8,1 bf16,bf16,4 bf16,int8,4}; do
    echo "== ours: train $spec"
    FULL_SIZE_TRAIN="$spec" "$bin" 2>&1 | grep -E '^\{.*train_step|rror|panick' | tee -a "$log" \
        || echo "{\"system\": \"qwen3-nvfp4\", \"metric\": \"train_step\", \"spec\": \"$spec\", \"error\": \"failed\"}" >> "$log"
done
echo "== baseline: HF transformers"
PYTHONUNBUFFERED=1 timeout 300 python3 scripts/bench/hf_baseline.py --config "$cfg" 2>"$OUT/hf_stderr.txt" | tee -a "$log"
if [ -x .gpu-bundle/bin/example-stress ]; then
    echo "== stress (FR-11) on the full-size model"
    timeout ${STRESS_TIMEOUT:-240} .gpu-bundle/bin/example-stress --weight "$FULL_SIZE_DIR/model.dat" --config "$cfg" --device cuda \
        --iterations 3 --processes 2 --prompt-len 64 --max-tokens 16 2>&1 | tail -25 | tee "$OUT/stress.txt"
fi
python3 scripts/bench/table.py "$log" | tee "$OUT/full_size.md"

#!/usr/bin/env bash
# Issue 12's recipe on a full-size model directory and issue 15's NVFP4 head,
# on the GPU machine, in one call: the full-size random Qwen3-4B (written by
# the full_size bench), decode with the bf16 and the NVFP4 tied head, `eval`
# on held-out text, and `train --distill` on text (seq 2048) and on chat
# (GSM8K), then plain QAT for comparison. Build here first:
#   scripts/gpu_bundle.sh --examples "train eval" --benches full_size
#   mkdir -p .gpu-bundle/data && cp ../shared/data/gutenberg/val.txt.gz .gpu-bundle/data/
#   zcat ../shared/data/gsm8k/train.jsonl.gz | head -512 > .gpu-bundle/data/gsm8k.jsonl
# then run(command="bash scripts/bench/recipes_full_size.sh", carry=[".gpu-bundle"]).
# Results in $OUT: recipes.jsonl (every JSON line), recipes.log (everything).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/gpu_env.sh"
bin=.gpu-bundle/bin
data=.gpu-bundle/data
model=/tmp/qwen3-4b-random
export FULL_SIZE_DIR=$model FULL_SIZE_SKIP=prefill
log="$OUT/recipes.log"; json="$OUT/recipes.jsonl"; : > "$json"
step() { # name timeout command... : runs it, keeps its JSON lines, notes a failure
    local name="$1" limit="$2"; shift 2
    echo "== $name" | tee -a "$log"
    local t0=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee -a "$log" | grep -E '^\{' | sed "s/^{/{\"step\": \"$name\", /" >> "$json"
    local rc=${PIPESTATUS[0]}
    echo "{\"step\": \"$name\", \"rc\": $rc, \"wall_s\": $((SECONDS - t0))}" | tee -a "$json"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt" | tee -a "$log"
step bench 140 "$bin/bench-full_size"
cp crates/tokenizer-bridge/assets/qwen3/config.json "$model/config.json"
step eval 90 "$bin/example-eval" --model-dir "$model" --data "$data/val.txt.gz" \
    --seq-len 2048 --batch-size 4 --token-cache /tmp/tokens --no-progress
train() { # name timeout flags...
    local name="$1" limit="$2"; shift 2
    step "$name" "$limit" "$bin/example-train" --model-dir "$model" --run-dir "/tmp/run-$name" \
        --steps 6 --eval-samples 0 --no-progress --save-every 1000 "$@"
    # Per-step tokens/s and memory, as the trainer logged them.
    sed "s/^{/{\"step\": \"$name\", /" "/tmp/run-$name/metrics.jsonl" >> "$json" 2>/dev/null
    rm -rf "/tmp/run-$name"
}
train distill-text 120 --data "$data/val.txt.gz" --text --distill --seq-len 2048 --batch-size 1
train distill-chat 80 --data "$data/gsm8k.jsonl" --distill --seq-len 512 --batch-size 8
train qat-text 50 --data "$data/val.txt.gz" --text --seq-len 2048 --batch-size 1

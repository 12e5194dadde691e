#!/usr/bin/env bash
# Issue 15, batched decode: this project's `generate_batch` and the Hugging Face baseline
# (eager, and static cache + torch.compile) at batch 1, 8, 32, 64 on the full-size Qwen3-4B
# config with random weights, same card, one run, under 4 minutes on an H200.
# Build here (the GPU machine has no Rust):
#   scripts/gpu_bundle.sh --benches batched_decode
# then with the device tool:
#   run(command="bash scripts/bench/batched_decode.sh", carry=[".gpu-bundle"])
# Results: $OUT/batched_decode.jsonl (raw JSON lines), $OUT/batched_decode.md (table),
# $OUT/gpu.txt (the card), $OUT/hf_stderr.txt.
# Env: BATCHES (default 1,8,32,64), PROMPT (longest prompt, 128), NEW (tokens per row, 64),
# TOTAL_S (the whole run's budget in seconds, 230).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/gpu_env.sh"
batches="${BATCHES:-1,8,32,64}" prompt="${PROMPT:-128}" new="${NEW:-64}" total="${TOTAL_S:-230}"
cfg=crates/tokenizer-bridge/assets/qwen3/config.json
bin=.gpu-bundle/bin/bench-batched_decode
log="$OUT/batched_decode.jsonl"
: > "$log"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"

echo "== ours: generate_batch (per-op forward), batches $batches, prompt <= $prompt, $new new"
BATCHED_BATCHES="$batches" BATCHED_PROMPT="$prompt" BATCHED_NEW="$new" \
    timeout 90 "$bin" 2>&1 | grep -E '^\{|rror|panick|SKIPPED' | tee -a "$log"

left=$((total - SECONDS))
echo "== baseline: HF transformers, eager then static cache + torch.compile (${left} s left)"
PYTHONUNBUFFERED=1 timeout "$((left > 10 ? left : 10))" python3 scripts/bench/hf_batched_decode.py \
    --config "$cfg" --batches "$batches" --prompt "$prompt" --new "$new" \
    --budget-s "$((left > 30 ? left - 25 : 1))" 2>"$OUT/hf_stderr.txt" | tee -a "$log"
[ "${PIPESTATUS[0]}" = 124 ] && echo "HF baseline stopped by the time limit (see $OUT/hf_stderr.txt)"

python3 scripts/bench/batched_table.py "$log" | tee "$OUT/batched_decode.md"
echo "total ${SECONDS} s"

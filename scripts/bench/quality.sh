#!/usr/bin/env bash
# Issue 12's quality experiment on the GPU machine, in calls of under 10
# minutes: the run lives in /tmp/quality (kept while the machine stays warm
# between two calls), `--budget-s` stops it before a unit that would not fit
# and the next call continues it with --resume. Build here first:
#   scripts/gpu_bundle.sh --examples quality
#   mkdir -p .gpu-bundle/data && cp ../shared/data/gutenberg/{train,val}.txt.gz .gpu-bundle/data/ \
#     && cp ../shared/data/sotu/val.txt.gz .gpu-bundle/data/sotu.txt.gz
# then run(command="bash scripts/bench/quality.sh 500", carry=[".gpu-bundle"]),
# the first argument being the seconds this call may spend (the others go to
# example-quality, e.g. --qad w4a16 --qat ""). What has been done so
# far comes back in $OUT (results.jsonl, curves.jsonl, pretrain.png, quality.log).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/gpu_env.sh"
budget="${1:-500}"; shift || true
data=.gpu-bundle/data
run=/tmp/quality
resume=()
[ -e "$run/results.jsonl" ] && resume=(--resume)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
.gpu-bundle/bin/example-quality --train "$data/train.txt.gz" --val "$data/val.txt.gz" \
    --ood "$data/sotu.txt.gz" --tokenizer-dir crates/tokenizer-bridge/assets/qwen3 \
    --out "$run" --budget-s "$budget" "${resume[@]}" "$@" 2>&1 | tee -a "$OUT/quality.log" |
    grep -v '^{"eval\|^{"blocks\|^{"done'
rc=${PIPESTATUS[0]}
cp "$run"/results.jsonl "$run"/curves.jsonl "$run"/pretrain.png "$run"/config.json "$OUT"/ 2>/dev/null
echo "quality: exit $rc"
exit "$rc"

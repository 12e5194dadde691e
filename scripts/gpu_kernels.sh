#!/usr/bin/env bash
# NVFP4 kernels on the GPU machine, which has no Rust toolchain: build the
# kernel test binaries and the nvfp4_gpu bench HERE (release, stripped) into
# .gpu-bundle/kernels/ (git-ignored) together with run.sh, then send it with
# the device tool:
#   scripts/gpu_kernels.sh                      # build the bundle here
#   run(command="bash .gpu-bundle/kernels/run.sh all", carry=[".gpu-bundle"])
# run.sh steps (any of): tests sanitize tune bench, or all (= tests bench
# sanitize; memcheck last, with whatever time of the call is left). Logs and
# the result table land in $OUT.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
./scripts/setup.sh >/dev/null
dest=.gpu-bundle/kernels
rm -rf "$dest" && mkdir -p "$dest"

collect() { # cargo args... -> copies the produced executables into $dest
    cargo "$@" --message-format=json 2>/dev/null |
        .venv/bin/python -c '
import json, sys
for line in sys.stdin:
    try: msg = json.loads(line)
    except ValueError: continue
    if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
        print(msg["target"]["kind"][0], msg["target"]["name"], msg["executable"])
' | while read -r kind name exe; do
        cp "$exe" "$dest/$kind-$name" && strip "$dest/$kind-$name"
        echo "bundled $kind-$name"
    done
}
# Fail loudly if either build fails (collect hides cargo's messages).
cargo test -p nvfp4-kernels --release --no-run
cargo bench --bench nvfp4_gpu --no-run
collect test -p nvfp4-kernels --release --no-run
collect bench --bench nvfp4_gpu --no-run

cat > "$dest/run.sh" <<'RUN'
#!/usr/bin/env bash
# Runs on the GPU machine. Usage: run.sh [tests] [sanitize] [tune] [bench] | all
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
steps="${*:-all}"
[ "$steps" = all ] && steps="tests bench sanitize"
start=$(date +%s)
left() { echo $(( ${RUN_BUDGET_S:-570} - ($(date +%s) - start) )); } # seconds left of this call
torch_lib=/opt/torch/.venv/lib/python3.12/site-packages/torch/lib
nvrtc="$(find /opt/torch/.venv /usr/local/cuda* -name 'libnvrtc.so*' 2>/dev/null | head -1)"
export LD_LIBRARY_PATH="$torch_lib:$(dirname "${nvrtc:-/usr/local/cuda/lib64/x}"):/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
export NVFP4_KERNEL_CACHE=/tmp/nvfp4-kernel-cache
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv,noheader | tee "$OUT/gpu.txt"
echo "nvrtc: ${nvrtc:-not found}"
status=0
tests=$(ls "$here"/test-* 2>/dev/null)
for step in $steps; do
    case "$step" in
    tests)
        for t in $tests; do
            echo "== $(basename "$t")"
            NVFP4_SYNC_CHECK=1 timeout 240 "$t" --test-threads=4 --nocapture > "$OUT/tests-$(basename "$t").log" 2>&1
            rc=$?; grep -E "^test |test result|max err/bound|panicked" "$OUT/tests-$(basename "$t").log" | tail -60
            [ $rc -eq 0 ] || { echo "FAIL $(basename "$t") rc=$rc"; status=1; }
        done ;;
    sanitize)
        for t in "$here"/test-gpu_*; do
            echo "== compute-sanitizer memcheck $(basename "$t")"
            budget=$(left); [ "$budget" -gt 240 ] && budget=240
            [ "$budget" -lt 30 ] && { echo "no time left for memcheck"; status=1; break; }
            NVFP4_SYNC_CHECK=1 timeout "$budget" compute-sanitizer --tool memcheck --leak-check no --error-exitcode 17 \
                "$t" --test-threads=1 >> "$OUT/memcheck.log" 2>&1
            rc=$?; grep -E "ERROR SUMMARY|test result|Invalid|FAIL" "$OUT/memcheck.log" | tail -4
            [ $rc -eq 0 ] || { echo "memcheck rc=$rc"; status=1; }
        done ;;
    tune)
        NVFP4_BENCH_TUNE=1 NVFP4_BENCH_ONLY=none timeout 200 "$here/bench-nvfp4_gpu" --bench > "$OUT/tune.log" 2>&1
        sed -n '/Tuning sweep/,$p' "$OUT/tune.log" | head -40 ;;
    bench)
        NVFP4_BENCH_TABLE="$OUT/table.md" timeout 420 "$here/bench-nvfp4_gpu" --bench > "$OUT/bench.log" 2>&1
        rc=$?; [ $rc -eq 0 ] || { echo "bench rc=$rc"; tail -20 "$OUT/bench.log"; status=1; }
        cat "$OUT/table.md" 2>/dev/null ;;
    *) echo "unknown step $step"; status=2 ;;
    esac
done
exit $status
RUN
chmod +x "$dest/run.sh"
du -sh "$dest"

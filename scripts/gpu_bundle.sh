#!/usr/bin/env bash
# The GPU machine has no Rust toolchain: build test binaries, examples and
# benches HERE (release, stripped) into .gpu-bundle/ (git-ignored), together
# with bundle/run-tests.sh, then send it with the device tool:
#   run(command="bash .gpu-bundle/run-tests.sh", carry=[".gpu-bundle"])
#
# Usage: scripts/gpu_bundle.sh [--tests "<cargo test selectors>"] [--examples "a b"] [--benches "x y"]
#   e.g. scripts/gpu_bundle.sh --tests "--workspace" --examples "run2 stress" --benches "nvfp4_gpu"
# The whole working tree plus the bundle must stay under 64 MiB; the script
# prints the bundle size.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
tests="" examples="" benches=""
while [ $# -gt 0 ]; do
    case "$1" in
        --tests) tests="$2"; shift 2 ;;
        --examples) examples="$2"; shift 2 ;;
        --benches) benches="$2"; shift 2 ;;
        *) echo "gpu_bundle: unknown argument '$1' (want --tests, --examples, --benches)" >&2; exit 2 ;;
    esac
done
./scripts/setup.sh >/dev/null
rm -rf .gpu-bundle && mkdir -p .gpu-bundle/bin

collect() { # cargo args... -> copies every produced executable into .gpu-bundle/bin
    # shellcheck disable=SC2068
    cargo $@ --message-format=json 2>/dev/null |
        .venv/bin/python -c '
import json, sys
for line in sys.stdin:
    try: msg = json.loads(line)
    except ValueError: continue
    if msg.get("reason") == "compiler-artifact" and msg.get("executable"):
        print(msg["target"]["kind"][0], msg["target"]["name"], msg["executable"])
' | while read -r kind name exe; do
        dest=".gpu-bundle/bin/${kind}-${name}"
        cp "$exe" "$dest" && strip "$dest"
        echo "$kind $name" >> .gpu-bundle/manifest
    done
}
# `cargo bench` builds with the bench profile (release) and takes no --release.
if [ -n "$tests" ]; then collect test --release --no-run $tests; fi
for e in $examples; do collect build --release --example "$e"; done
for b in $benches; do collect bench --no-run --bench "$b"; done

cat > .gpu-bundle/run-tests.sh <<'RUN'
#!/usr/bin/env bash
# Runs on the GPU machine: every bundled test binary with --include-ignored
# (the `#[ignore = "needs CUDA"]` tests run here and fail if CUDA is missing).
# The raw log of every binary is kept: all of them in $OUT/tests.log (one
# "===== <binary>" header each) and as separate files in $OUT/test-logs.tar.gz
# (at most 8 files come back from $OUT). The table of counts goes to stdout
# and $OUT/summary.txt.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
torch_lib=/opt/torch/.venv/lib/python3.12/site-packages/torch/lib
nvrtc_dir="$(dirname "$(find /opt/torch/.venv /usr/local/cuda* -name 'libnvrtc.so*' 2>/dev/null | head -1)")"
export LD_LIBRARY_PATH="$torch_lib:$nvrtc_dir:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export OUT="${OUT:-/tmp/out}"; mkdir -p "$OUT"
logs=/tmp/test-logs; rm -rf "$logs"; mkdir -p "$logs"
# Test binaries find fixtures through the absolute CARGO_MANIFEST_DIR they were
# built under; recreate that path when the tree sits elsewhere here.
built_root="$(cat "$here/built_root")"
repo="$(cd "$here/.." && pwd)"
if [ "$repo" != "$built_root" ] && [ ! -e "$built_root" ]; then
    mkdir -p "$(dirname "$built_root")" && ln -s "$repo" "$built_root"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
fail=0
summary="$OUT/summary.txt"
printf '%-6s %-40s %7s %7s %8s\n' verdict binary passed failed ignored | tee "$summary"
for t in "$here"/bin/test-* "$here"/bin/lib-*; do
    [ -e "$t" ] || continue
    name="$(basename "$t")"
    log="$logs/$name.log"
    if "$t" --include-ignored --test-threads=1 > "$log" 2>&1; then verdict=PASS; else verdict=FAIL; fail=1; fi
    # libtest's own count line: "test result: ok. P passed; F failed; I ignored; ..."
    counts="$(grep -E '^test result:' "$log" | tail -1)"
    count() { echo "$counts" | grep -oE "[0-9]+ $1" | grep -oE '[0-9]+' || echo '?'; }
    printf '%-6s %-40s %7s %7s %8s\n' "$verdict" "$name" "$(count passed)" "$(count failed)" \
        "$(count ignored)" | tee -a "$summary"
    [ "$verdict" = PASS ] || tail -30 "$log"
    { echo "===== $name"; cat "$log"; } >> "$OUT/tests.log"
done
tar czf "$OUT/test-logs.tar.gz" -C "$logs" .
exit $fail
RUN
chmod +x .gpu-bundle/run-tests.sh
pwd > .gpu-bundle/built_root
du -sh .gpu-bundle

"""Turns the JSON lines of scripts/bench/full_size.sh into the markdown table of docs/PERF.md."""
import json
import sys


def main(path):
    rows = [json.loads(l) for l in open(path) if l.startswith("{")]
    ours = [r for r in rows if r.get("system") == "qwen3-nvfp4"]
    hf = [r for r in rows if r.get("system", "").startswith("hf-")]
    gpu = next((r["name"] for r in hf if r.get("metric") == "gpu"), "?")
    print(f"card: {gpu}; baseline: {hf[0]['system'] if hf else 'n/a'}\n")
    print("| measurement | qwen3-nvfp4 | HF transformers bf16 | ratio |")
    print("| --- | --- | --- | --- |")

    def one(rs, metric, key="value"):
        return next((r.get(key) for r in rs if r.get("metric") == metric), None)

    def fmt(v, unit=""):
        return "n/a" if v is None else (f"{v:,.1f}{unit}" if isinstance(v, float) else f"{v}{unit}")

    def ratio(a, b):
        return "" if not a or not b else f"{a / b:.2f}x"

    load = next((r for r in ours if r.get("metric") == "load"), None)
    if load:
        print(f"| load .dat ({load['file_bytes']/1e9:.2f} GB) to GPU, page cache | {load['load_s']:.2f} s = {load['gb_per_s']:.2f} GB/s | | |")
    for metric, label in [("decode_tok_s", "decode tok/s (batch 1, 512 prompt, 256 new, greedy)"),
                          ("prefill_tok_s", "prefill tok/s (2048-token prompt)")]:
        a, b = one(ours, metric), one(hf, metric)
        print(f"| {label} | {fmt(a)} | {fmt(b)} | {ratio(a, b)} |")
    mem = next((r for r in ours if r.get("metric") == "memory_at_rest"), None)
    if mem:
        print(f"| memory at rest: weights + 4k-token KV cache | {mem['weights_gib']:.2f} + {mem['kv_cache_4k_gib']:.2f} = {mem['total_gib']:.2f} GiB | {one(hf, 'weights_bytes', 'value') / 2**30:.2f} GiB weights (bf16) | |" if one(hf, 'weights_bytes') else "")
    for r in [r for r in rows if r.get("metric") == "train_step"]:
        who = "ours" if r["system"] == "qwen3-nvfp4" else "HF"
        if "error" in r:
            print(f"| train ({who}) batch {r['batch']} seq {r['seq']} | {r['error'][:80]} | | |")
            continue
        opt = f"master {r.get('master')}, moments {r.get('moments')}"
        peak = r.get("peak_reserved_gib", r.get("peak_gib"))
        cell = f"{r['step_s']:.2f} s/step, {r['tok_s']:,.0f} tok/s, peak {peak:.1f} GiB"
        if who == "ours":
            print(f"| train step, batch {r['batch']}, seq {r['seq']}, {opt}, QAT | {cell} | | |")
        else:
            print(f"| train step, batch {r['batch']}, seq {r['seq']}, HF bf16 AdamW | | {cell} | |")


if __name__ == "__main__":
    main(sys.argv[1])

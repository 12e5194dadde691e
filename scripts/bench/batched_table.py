"""Turns the JSON lines of scripts/bench/batched_decode.sh into one markdown table:
decode tokens/s summed over rows, per batch size, ours against each HF mode."""
import json
import sys


def main(path):
    rows = [json.loads(l) for l in open(path) if l.startswith("{")]
    lines = [r for r in rows if r.get("metric") == "batched_decode_tok_s"]
    hf = [r for r in rows if r.get("system", "").startswith("hf-")]
    gpu = next((r["name"] for r in hf if r.get("metric") == "gpu"), "?")
    print(f"card: {gpu}; baseline: {hf[0]['system'] if hf else 'n/a'}, torch {hf[0].get('torch', '?') if hf else '?'}\n")

    def cell(system_prefix, path, batch):
        r = next((r for r in lines if r["system"].startswith(system_prefix) and r.get("path") == path
                  and r.get("batch") == batch), None)
        if r is None:
            return None, "n/a"
        if "error" in r:
            return None, r["error"][:60]
        note = " (not compiled)" if path == "static+compile" and not r.get("compiled") else ""
        return r["value"], f"{r['value']:,.0f} ({r['ms_per_step']:.1f} ms/step){note}"

    batches = sorted({r["batch"] for r in lines})
    print("| batch | qwen3-nvfp4 generate_batch | HF eager | HF static+compile | ours / eager | ours / compile |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for b in batches:
        ours, o = cell("qwen3", "per-op generate_batch", b)
        eager, e = cell("hf-", "eager", b)
        comp, c = cell("hf-", "static+compile", b)
        ratio = lambda a, x: f"{a / x:.2f}x" if a and x else ""
        print(f"| {b} | {o} | {e} | {c} | {ratio(ours, eager)} | {ratio(ours, comp)} |")
    fused = next((r for r in lines if r["system"].startswith("qwen3") and "generate" in r.get("path", "")
                  and "batch" not in r.get("path", "") and "value" in r), None)
    if fused:
        print(f"\nbatch 1 through `generate` ({fused['path']}): {fused['value']:,.0f} tok/s")
    print("\ntokens/s = decode tokens summed over rows (each row's tokens after its first) / decode time; "
          "prompts left-padded, row r has max - (7r mod 32) tokens.")


if __name__ == "__main__":
    main(sys.argv[1])

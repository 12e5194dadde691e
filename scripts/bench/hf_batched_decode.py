"""Baseline of benches/batched_decode.rs: Hugging Face transformers Qwen3 in bf16, random
weights, batched greedy decode of left-padded prompts, tokens/s summed over rows.

Two modes at each batch size:
- eager: the default dynamic cache, no compilation (generate's `disable_compile=True`);
- static+compile: `cache_implementation="static"`, whose decode steps transformers compiles
  itself (torch.compile with its `CompileConfig` defaults: inductor, mode "reduce-overhead" =
  CUDA graphs; the line's `compiled` says whether it did); `--compile-dynamic`
  picks `dynamic` of that compile (default None: the first batch size is compiled static,
  the second triggers one recompile with a dynamic batch dimension that later sizes reuse;
  "false" compiles each batch size anew, about a minute each).

Prompt lengths are the Rust bench's: row r has `prompt - (7 r mod 32)` tokens, left padded.
Decode tokens/s = B * (new - 1) / (t(new) - t(1)), where t(n) is a synchronized
`generate` of n new tokens (min_new_tokens = n, so no row stops early): the prefill and
the first token cancel out, as in the Rust bench's decode figure.

Prints one JSON object per measurement; a mode that fails or does not fit the time budget
prints an "error" line and the script goes on. Run on the GPU machine (no network needed):
    python3 scripts/bench/hf_batched_decode.py --config crates/tokenizer-bridge/assets/qwen3/config.json
"""
import argparse
import json
import sys
import time

import torch
import transformers
from transformers import Qwen3Config, Qwen3ForCausalLM

START = time.perf_counter()


def emit(**kv):
    print(json.dumps({"system": "hf-transformers-" + transformers.__version__, **kv}), flush=True)


def elapsed():
    return time.perf_counter() - START


def prompt_len(longest, row):
    return longest - (7 * row) % 32


def batch_inputs(batch, longest, vocab, gen, device):
    """Left-padded ids and attention mask [batch, longest] (pad id 0)."""
    ids = torch.zeros(batch, longest, dtype=torch.long, device=device)
    mask = torch.zeros(batch, longest, dtype=torch.long, device=device)
    for r in range(batch):
        n = prompt_len(longest, r)
        ids[r, longest - n:] = torch.randint(1, vocab, (n,), device=device, generator=gen)
        mask[r, longest - n:] = 1
    return ids, mask


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def measure(model, mode, batch, ids, mask, new, compile_dynamic):
    kw = dict(attention_mask=mask, do_sample=False, pad_token_id=0, use_cache=True)
    no_compile = hasattr(transformers.GenerationConfig(), "disable_compile")
    if mode == "eager":
        if no_compile:
            kw["disable_compile"] = True
        warm_new = 8
    elif mode == "static":  # static cache, not compiled (not in the default modes)
        kw["cache_implementation"] = "static"
        if no_compile:
            kw["disable_compile"] = True
        warm_new = new
    elif mode == "static+compile":
        kw["cache_implementation"] = "static"
        # transformers' defaults (mode "reduce-overhead") but for `dynamic`.
        kw["compile_config"] = transformers.CompileConfig(dynamic=compile_dynamic)
        # The same length as the timed run: a static cache of another length
        # would be another shape, and another compile.
        warm_new = new
    else:
        raise ValueError(f"unknown mode {mode!r} (want eager, static or static+compile)")

    def gen(n):
        return model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)

    # Warm-up: cuBLAS, the allocator; for static+compile the compile and the CUDA-graph
    # recordings (its first decode steps).
    warm_s, _ = timed(lambda: gen(warm_new))
    t_new, out = timed(lambda: gen(new))
    t_one, _ = timed(lambda: gen(1))
    produced = out.shape[1] - ids.shape[1]
    if produced != new:
        raise RuntimeError(f"generate produced {produced} tokens, asked {new}")
    decode_s = max(t_new - t_one, 1e-9)
    emit(metric="batched_decode_tok_s", batch=batch, value=batch * (new - 1) / decode_s,
         path=mode, prompt_max=ids.shape[1], prompt_min=int(mask.sum(1).min()),
         new=new, decode_s=decode_s, ms_per_step=decode_s * 1e3 / (new - 1),
         prefill_and_first_s=t_one, warmup_s=warm_s,
         compiled=getattr(model, "_compiled_call", None) is not None,
         gpu_gib_reserved=torch.cuda.memory_reserved() / 2**30 if torch.cuda.is_available() else None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--prompt", type=int, default=128, help="longest prompt (>= 32)")
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--modes", default="eager,static+compile")
    ap.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a smoke test)")
    ap.add_argument("--compile-dynamic", default="none", choices=["none", "true", "false"])
    ap.add_argument("--budget-s", type=float, default=170.0,
                    help="start no measurement after this many seconds (compiles are long)")
    args = ap.parse_args()
    compile_dynamic = {"none": None, "true": True, "false": False}[args.compile_dynamic]
    cfg = Qwen3Config.from_json_file(args.config)
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device(args.device):
        model = Qwen3ForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    model.eval()
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else args.device
    emit(metric="gpu", name=name, torch=torch.__version__, model_init_s=elapsed())
    gen = torch.Generator(device=args.device).manual_seed(1)
    batches = [int(b) for b in args.batches.split(",")]
    inputs = {b: batch_inputs(b, args.prompt, cfg.vocab_size, gen, args.device) for b in batches}
    for mode in args.modes.split(","):
        for b in batches:
            if elapsed() > args.budget_s:
                emit(metric="batched_decode_tok_s", batch=b, path=mode,
                     error=f"skipped: time budget of {args.budget_s:.0f} s spent")
                continue
            try:
                with torch.no_grad():
                    measure(model, mode, b, *inputs[b], args.new, compile_dynamic)
            except Exception as e:  # one failing mode must not hide the others
                emit(metric="batched_decode_tok_s", batch=b, path=mode,
                     error=f"{type(e).__name__}: {str(e)[:300]}")
                torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())

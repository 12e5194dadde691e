"""Baseline for docs/PERF.md: Hugging Face transformers Qwen3 in bf16 on the same card,
same config, random weights (speed and memory do not depend on the values).

Prints one JSON object per measurement on stdout, so scripts/bench/full_size.sh can put
it in the same table as this project's numbers. Run on the GPU machine:
    python3 scripts/bench/hf_baseline.py --config crates/tokenizer-bridge/assets/qwen3/config.json
"""
import argparse
import json
import sys
import time

import torch
import transformers
from transformers import Qwen3Config, Qwen3ForCausalLM


def emit(**kv):
    print(json.dumps({"system": "hf-transformers-" + transformers.__version__, **kv}), flush=True)


def timed(fn, reps=1):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        out = fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / reps, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--prefill", type=int, default=2048)
    ap.add_argument("--train-seq", type=int, default=2048)
    ap.add_argument("--train-batches", default="1,4")
    ap.add_argument("--skip", default="", help="comma list of decode,prefill,train")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    cfg = Qwen3Config.from_pretrained(args.config) if args.config.endswith("/") else Qwen3Config.from_json_file(args.config)
    torch.manual_seed(0)
    dev = "cuda"
    with torch.device(dev):
        model = Qwen3ForCausalLM(cfg).to(torch.bfloat16)
    model.eval()
    emit(metric="gpu", name=torch.cuda.get_device_name(0), torch=torch.__version__)
    emit(metric="weights_bytes", value=sum(p.numel() * p.element_size() for p in model.parameters()))
    gen = torch.Generator(device=dev).manual_seed(1)
    if "decode" not in skip:
        ids = torch.randint(0, cfg.vocab_size, (1, args.prompt), device=dev, generator=gen)
        kw = dict(max_new_tokens=args.new, min_new_tokens=args.new, do_sample=False, use_cache=True)
        with torch.no_grad():
            model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)  # warm-up
            dt, out = timed(lambda: model.generate(ids, **kw))
            pre, _ = timed(lambda: model(ids), reps=3)
        new = out.shape[1] - ids.shape[1]
        emit(metric="decode_tok_s", value=new / max(dt - pre, 1e-9), total_s=dt, prompt=args.prompt, new=new)
    if "prefill" not in skip:
        ids = torch.randint(0, cfg.vocab_size, (1, args.prefill), device=dev, generator=gen)
        with torch.no_grad():
            timed(lambda: model(ids, logits_to_keep=1))
            dt, _ = timed(lambda: model(ids, logits_to_keep=1), reps=5)
        emit(metric="prefill_tok_s", value=args.prefill / dt, seconds=dt, tokens=args.prefill)
    if "train" not in skip:
        model.train()
        model.gradient_checkpointing_enable()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
        for b in [int(x) for x in args.train_batches.split(",")]:
            ids = torch.randint(0, cfg.vocab_size, (b, args.train_seq), device=dev, generator=gen)
            try:
                def step():
                    loss = model(ids, labels=ids).loss
                    loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    return loss
                step()
                torch.cuda.reset_peak_memory_stats()
                dt, _ = timed(step, reps=3)
                peak = torch.cuda.max_memory_allocated()
                emit(metric="train_step", batch=b, seq=args.train_seq, step_s=dt,
                     tok_s=b * args.train_seq / dt, peak_gib=peak / 2**30,
                     peak_reserved_gib=torch.cuda.max_memory_reserved() / 2**30, master="bf16", moments="bf16",
                     grad_checkpointing=True)
            except torch.cuda.OutOfMemoryError as e:
                emit(metric="train_step", batch=b, seq=args.train_seq, error="OOM: " + str(e)[:200])
                opt.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())

"""Issue 14's training baselines on the same card as this project's rows:
Hugging Face transformers bf16 (eager), with and without gradient checkpointing,
and transformers + Liger kernels (fused RMSNorm, RoPE, SwiGLU and linear
cross-entropy), with and without checkpointing; batch 1 and 4 at seq 2048 by
default, random weights, fused torch AdamW on bf16 parameters.

Every row runs in a fresh process (so each peak is its own) and prints one JSON
line: tokens/s, step time, peak allocated and reserved memory, and MFU with
FLOPs per token = 6 N + 6 L q_dim T (the causal attention's two matmuls, forward
and backward), against the card's dense bf16 peak (--peak-tflops).

The GPU machine has no network: fetch the Liger wheel here first
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux2014_x86_64 -d .whl liger-kernel==0.8.5
and run there (carry [".whl"]):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site python3 scripts/bench/train_baselines.py \
        --config crates/tokenizer-bridge/assets/qwen3/config.json
A Liger row without Liger installed prints an error line instead of a number.
"""
import argparse
import json
import subprocess
import sys
import time

ROWS = ["eager", "eager+ckpt", "liger", "liger+ckpt"]


def flops_per_token(cfg, seq):
    n = sum_params(cfg)
    q_dim = cfg.num_attention_heads * cfg.head_dim
    return 6 * n + 6 * cfg.num_hidden_layers * q_dim * seq


def sum_params(cfg):
    h, i, v, layers = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    q = cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_key_value_heads * cfg.head_dim
    block = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h + 2 * cfg.head_dim
    heads = 1 if cfg.tie_word_embeddings else 2
    return heads * v * h + layers * block + h


def one_row(args):
    """Runs in its own process: build, warm up, time `--reps` steps, print one line."""
    import torch
    import transformers
    from transformers import Qwen3Config, Qwen3ForCausalLM

    row, batch = args.row, args.batch
    cfg = Qwen3Config.from_json_file(args.config)
    line = {"system": "hf-transformers-" + transformers.__version__, "row": row,
            "batch": batch, "seq": args.seq, "gpu": torch.cuda.get_device_name(0)}
    if row.startswith("liger"):
        try:
            import liger_kernel
            from liger_kernel.transformers import apply_liger_kernel_to_qwen3
        except ImportError as e:
            print(json.dumps({**line, "error": f"liger-kernel not importable: {e}"}), flush=True)
            return 0
        apply_liger_kernel_to_qwen3(rope=True, rms_norm=True, swiglu=True,
                                    fused_linear_cross_entropy=True, cross_entropy=False)
        line["liger"] = getattr(liger_kernel, "__version__", "?")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(cfg).to(torch.bfloat16)
    model.train()
    if row.endswith("+ckpt"):
        model.gradient_checkpointing_enable()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    gen = torch.Generator(device="cuda").manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (batch, args.seq), device="cuda", generator=gen)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    try:
        step()
        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(args.reps):
            step()
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / args.reps
    except torch.cuda.OutOfMemoryError as e:
        print(json.dumps({**line, "error": "OOM: " + str(e)[:160]}), flush=True)
        return 0
    tok_s = batch * args.seq / dt
    mfu = tok_s * flops_per_token(cfg, args.seq) / (args.peak_tflops * 1e12)
    print(json.dumps({**line, "step_s": dt, "tok_s": tok_s, "mfu": mfu,
                      "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
                      "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30}), flush=True)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=989.4,
                    help="dense bf16 peak of the card (H100/H200 SXM: 989.4)")
    ap.add_argument("--timeout", type=int, default=240, help="seconds per row")
    ap.add_argument("--row", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.row:
        return one_row(args)
    for row in args.rows.split(","):
        if row not in ROWS:
            sys.exit(f"--rows: unknown row {row!r} (known: {', '.join(ROWS)})")
        for b in args.batches.split(","):
            cmd = [sys.executable, __file__, "--config", args.config, "--seq", str(args.seq),
                   "--reps", str(args.reps), "--peak-tflops", str(args.peak_tflops),
                   "--row", row, "--batch", b]
            try:
                subprocess.run(cmd, timeout=args.timeout, check=False)
            except subprocess.TimeoutExpired:
                print(json.dumps({"row": row, "batch": int(b), "error": f"timeout {args.timeout} s"}),
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

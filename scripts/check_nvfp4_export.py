#!/usr/bin/env python3
"""Checks a model directory exported by this project in a standard NVFP4
layout with independent code: the weights are dequantized by the
`compressed-tensors` package (or ModelOpt's reader, see nvfp4_interop.py),
transformers' Qwen3ForCausalLM is built from them (f32, CPU, eager
attention), and its logits for the prompt in LOGITS must equal the logits
this project computed (also in LOGITS) within 1e-5 relative to max |logit|.

  check_nvfp4_export.py --format compressed-tensors|modelopt --dir DIR --logits FILE

FILE is a safetensors file with `prompt` (i64 [T]) and `logits` (f32 [T, V]).
Exit status 0 when they agree, 1 otherwise; the result is printed either way.
Run by the Rust test `tests/nvfp4_interop.rs` (CI), with the venv of scripts/setup.sh.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nvfp4_interop import ct_dequantize, modelopt_dequantize, qwen3_logits  # noqa: E402

TOLERANCE = 1e-5


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--format", required=True, choices=["compressed-tensors", "modelopt"])
    ap.add_argument("--dir", required=True, type=Path)
    ap.add_argument("--logits", required=True, type=Path)
    args = ap.parse_args()
    ours = load_file(str(args.logits))
    if args.format == "compressed-tensors":
        state, reader = ct_dequantize(args.dir), "compressed-tensors (library decompression)"
    else:
        state, reader = modelopt_dequantize(args.dir)
    ref = qwen3_logits(args.dir, state, ours["prompt"].long())
    got = ours["logits"].float()
    if ref.shape != got.shape:
        print(f"shape mismatch: transformers {tuple(ref.shape)}, ours {tuple(got.shape)}")
        return 1
    err = (ref - got).abs().max().item() / ref.abs().max().item()
    ok = err <= TOLERANCE
    print(f"{args.format} via {reader}: max |diff| / max |logit| = {err:.3e} "
          f"(tolerance {TOLERANCE:.0e}) -> {'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

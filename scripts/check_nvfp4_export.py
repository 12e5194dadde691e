#!/usr/bin/env python3
"""Checks a model directory exported by this project in a standard NVFP4
layout with independent code: the weights are dequantized by the
`compressed-tensors` package (or ModelOpt's reader, see nvfp4_interop.py),
transformers' Qwen3ForCausalLM is built from them (f32, CPU, eager
attention), and its logits for the prompt in LOGITS must equal the logits
this project computed (also in LOGITS) within 1e-5 relative to max |logit|.

  check_nvfp4_export.py --check compressed-tensors|modelopt DIR LOGITS [--check ...]

LOGITS is a safetensors file with `prompt` (i64 [T]) and `logits` (f32 [T, V]).
Several checks run in one process (importing the libraries is the slow part).
Exit status 0 when every check agrees, 1 otherwise; each result is printed.
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


def check(fmt: str, model_dir: Path, logits: Path) -> bool:
    ours = load_file(str(logits))
    if fmt == "compressed-tensors":
        state, reader = ct_dequantize(model_dir), "compressed-tensors (library decompression)"
    elif fmt == "modelopt":
        state, reader = modelopt_dequantize(model_dir)
    else:
        print(f"{model_dir}: unknown format {fmt!r} -> FAIL")
        return False
    ref = qwen3_logits(model_dir, state, ours["prompt"].long())
    got = ours["logits"].float()
    if ref.shape != got.shape:
        print(f"{model_dir}: shape mismatch: transformers {tuple(ref.shape)}, ours {tuple(got.shape)} -> FAIL")
        return False
    err = (ref - got).abs().max().item() / ref.abs().max().item()
    ok = err <= TOLERANCE
    print(f"{model_dir.name}: {fmt} via {reader}: max |diff| / max |logit| = {err:.3e} "
          f"(tolerance {TOLERANCE:.0e}) -> {'OK' if ok else 'FAIL'}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", nargs=3, action="append", required=True,
                    metavar=("FORMAT", "DIR", "LOGITS"))
    args = ap.parse_args()
    results = [check(fmt, Path(d), Path(l)) for fmt, d, l in args.check]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())

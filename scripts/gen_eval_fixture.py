#!/usr/bin/env python3
"""Generates crates/trainer/tests/fixtures/eval/reference.json: the held-out
loss that Hugging Face transformers' Qwen3ForCausalLM (f32, CPU, eager)
computes on packed windows of a token sequence, with the weights of the tied
parity fixture (crates/qwen3-model/tests/fixtures/parity/tied_gqa2_theta5e6,
rebuilt here bit for bit by gen_parity_fixtures.build_model with its seed).

Windows as `trainer::text_windows` cuts them: window i holds ids
i*L .. i*L + L + 1 (L = seq_len), so every id but the first is predicted once;
HF's `labels=` loss is the mean over a window's L predictions, so the sum is
mean * predictions, and the reference is sum / (n - 1).

Run from the repo root:
  .venv/bin/pip install -q transformers==5.24.0
  .venv/bin/python scripts/gen_eval_fixture.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gen_parity_fixtures import CASES, VOCAB, build_model  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "crates/trainer/tests/fixtures/eval/reference.json"
CASE = "tied_gqa2_theta5e6"
SEQ_LEN = 16
N_IDS = 45  # three windows, the last one short


def main() -> None:
    torch.set_grad_enabled(False)
    case = next(c for c in CASES if c["name"] == CASE)
    model, _ = build_model(case, torch.Generator().manual_seed(case["seed"]))
    ids = torch.randint(0, VOCAB, (N_IDS,), generator=torch.Generator().manual_seed(7))
    total, count = 0.0, 0
    for start in range(0, N_IDS - 1, SEQ_LEN):
        w = ids[start:start + SEQ_LEN + 1]
        loss = model(w[None], labels=w[None], use_cache=False).loss.double().item()
        total += loss * (w.numel() - 1)
        count += w.numel() - 1
    ref = {"case": CASE, "seq_len": SEQ_LEN, "ids": ids.tolist(), "tokens": count, "mean_loss": total / count}
    OUT.write_text(json.dumps(ref) + "\n")
    print(f"{OUT}: mean loss {ref['mean_loss']:.6f} over {count} tokens")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Generates crates/qwen3-model/tests/fixtures/compressed_tensors/: a tiny random
Qwen3 quantized to NVFP4 (W4A16, `nvfp4-pack-quantized`) by the
`compressed-tensors` package itself, and the logits transformers computes with
the weights that package decompresses. The Rust test `ct_fixture` loads the
directory with this project's reader and compares.

  model/config.json, model/model.safetensors
                         written by transformers' save_pretrained after compressed-tensors'
                         ModelCompressor compressed the model (its quantization_config)
  reference.safetensors  prompt [11] (i64), logits [11, V] (f32)

Qparams come from the library too: `generate_gparam` (per-tensor global scale)
and `calculate_qparams` (E4M3 block scales), as llm-compressor's observers call
them. Fixed seed: regenerating gives the same files.

Run from the repo root (after ./scripts/setup.sh):
  .venv/bin/python scripts/gen_ct_fixture.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nvfp4_interop import ct_dequantize, qwen3_logits  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "crates/qwen3-model/tests/fixtures/compressed_tensors"
MODEL = OUT / "model"
SEED = 13
VOCAB = 320
PROMPT_LEN = 11


def main() -> None:
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationConfig, QuantizationScheme,
                                                 apply_quantization_config, preset_name_to_scheme)
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(SEED)
    cfg = Qwen3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=1e6,
                      max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=True,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None)
    cfg.architectures = ["Qwen3ForCausalLM"]
    model = Qwen3ForCausalLM._from_config(cfg, attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norms: random, so a misplaced one shows
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif "embed" in name:
                p.copy_(torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * p.shape[1] ** -0.5)

    scheme: QuantizationScheme = preset_name_to_scheme("NVFP4A16", ["Linear"])
    qconfig = QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"])
    apply_quantization_config(model, qconfig)
    with torch.no_grad():
        for name, module in model.named_modules():
            if not hasattr(module, "weight_global_scale"):
                continue
            w = module.weight
            g = generate_gparam(w.min(), w.max())
            blocks = w.view(w.shape[0], -1, 16)
            scale, _ = calculate_qparams(blocks.amin(-1), blocks.amax(-1), scheme.weights, global_scale=g)
            module.weight_global_scale.copy_(g)
            module.weight_scale.copy_(scale)

    compressor = ModelCompressor.from_pretrained_model(model, quantization_format="nvfp4-pack-quantized")
    compressor.compress_model(model)
    MODEL.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(MODEL)
    compressor.update_config(str(MODEL))
    for extra in MODEL.glob("*"):
        if extra.name not in ("config.json", "model.safetensors"):
            extra.unlink()

    from safetensors.torch import save_file

    ids = torch.randint(0, VOCAB, (PROMPT_LEN,), generator=torch.Generator().manual_seed(SEED))
    logits = qwen3_logits(MODEL, ct_dequantize(MODEL), ids)
    save_file({"prompt": ids, "logits": logits.contiguous()}, OUT / "reference.safetensors")
    qc = json.loads((MODEL / "config.json").read_text())["quantization_config"]
    print(f"wrote {OUT}: format {qc['format']}, ignore {qc['ignore']}, "
          f"max |logit| {logits.abs().max().item():.3f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Generates crates/qwen3-model/tests/fixtures/parity/<case>/: small random
Qwen3 models with NVFP4 projections and what Hugging Face transformers'
Qwen3ForCausalLM (f32, CPU, eager attention) computes with them, so the Rust
model can be checked against an independent implementation.

Per case:
  config.json            written by transformers (its 5.x layout: rope_parameters, dtype)
  model.dat              as the original tools wrote it: every projection (and an
                         untied lm_head) as `<name>.weight.qdata` (u8) +
                         `<name>.weight.scale` (E4M3), quantized by the independent
                         scripts/nvfp4_dat.py; embeddings and norms as raw bf16
  reference.safetensors  prompt_a [7], prompt_b [13] (i64 token ids)
                         logits_a [7, V], logits_b [13, V] (f32, whole prompt, no cache)
                         greedy_a, greedy_b [16] (i64; HF generate, do_sample=False, with its cache)
                         chunk_split_b [1], chunk_logits_b [13 - split, V]: logits of the
                         second half of prompt_b computed on top of a cache of the first half

The HF model is loaded with exactly the weights the `.dat` holds (dequantized
NVFP4 projections, bf16-rounded embeddings and norms), so the only difference
left is the implementation. Norm weights are random (not 1) so a norm that is
skipped or misplaced shows up. Fixed seeds: regenerating gives the same files.

Run from the repo root:
  .venv/bin/pip install -q transformers==5.24.0
  .venv/bin/python scripts/gen_parity_fixtures.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nvfp4_dat import ELEM_F8_E4M3, ELEM_U8, dequantize_nvfp4, quantize_nvfp4, write_dat  # noqa: E402

import transformers  # noqa: E402
from transformers import DynamicCache, Qwen3Config, Qwen3ForCausalLM  # noqa: E402

TRANSFORMERS_VERSION = "5.24.0"  # the version these fixtures were generated with
OUT = Path(__file__).resolve().parent.parent / "crates/qwen3-model/tests/fixtures/parity"
VOCAB = 384
NEW_TOKENS = 16
PROMPT_LENS = {"a": 7, "b": 13}
CHUNK_SPLIT = 6
# Greedy ids are compared exactly, so each step's top-1 must beat the top-2 by
# far more than the 1e-5 relative tolerance of the logits comparisons.
MIN_MARGIN = 1e-3

CASES = [
    # tied lm_head, GQA ratio 2, head_dim == hidden/heads, theta 5e6 (Qwen3-4B-Instruct-2507's)
    dict(name="tied_gqa2_theta5e6", seed=1, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
         num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=5e6, tie_word_embeddings=True),
    # untied NVFP4 lm_head, GQA ratio 3, head_dim 32 != 48/6, theta 1e6, 3 layers
    dict(name="untied_gqa3_hd32_theta1e6", seed=2, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
         num_attention_heads=6, num_key_value_heads=2, head_dim=32, rope_theta=1e6, tie_word_embeddings=False),
]

PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def build_model(case: dict, gen: torch.Generator) -> tuple[Qwen3ForCausalLM, list]:
    """A random HF model whose weights are exactly those of the returned `.dat` entries."""
    cfg = Qwen3Config(vocab_size=VOCAB, max_position_embeddings=512, rms_norm_eps=1e-6,
                      bos_token_id=None, eos_token_id=None, pad_token_id=None,
                      **{k: v for k, v in case.items() if k not in ("name", "seed")})
    cfg.architectures = ["Qwen3ForCausalLM"]
    model = Qwen3ForCausalLM._from_config(cfg, attn_implementation="eager", dtype=torch.float32).eval()
    entries = []
    state = dict(model.named_parameters())

    def raw(key: str, values: torch.Tensor) -> None:
        """Raw tensor stored as bf16, the original checkpoint's dtype."""
        b = values.to(torch.bfloat16)
        entries.append((key, b))
        with torch.no_grad():
            state[key].copy_(b.float())

    def packed(base: str, std: float) -> None:
        w = state[f"{base}.weight"]
        qdata, scale = quantize_nvfp4(torch.randn(w.shape, generator=gen) * std)
        entries.append((f"{base}.weight.qdata", qdata, ELEM_U8))
        entries.append((f"{base}.weight.scale", scale, ELEM_F8_E4M3))
        with torch.no_grad():
            w.copy_(dequantize_nvfp4(qdata, scale))

    h = cfg.hidden_size
    raw("model.embed_tokens.weight", torch.randn(VOCAB, h, generator=gen))
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}"
        raw(f"{p}.input_layernorm.weight", 1 + 0.2 * torch.randn(h, generator=gen))
        for name in PROJECTIONS:
            fan_in = state[f"{p}.{name}.weight"].shape[1]
            packed(f"{p}.{name}", fan_in ** -0.5)
        raw(f"{p}.self_attn.q_norm.weight", 1 + 0.2 * torch.randn(cfg.head_dim, generator=gen))
        raw(f"{p}.self_attn.k_norm.weight", 1 + 0.2 * torch.randn(cfg.head_dim, generator=gen))
        raw(f"{p}.post_attention_layernorm.weight", 1 + 0.2 * torch.randn(h, generator=gen))
    raw("model.norm.weight", 1 + 0.2 * torch.randn(h, generator=gen))
    if not cfg.tie_word_embeddings:
        packed("lm_head", 2 * h ** -0.5)
    return model, entries


def greedy(model: Qwen3ForCausalLM, prompt: torch.Tensor) -> tuple[torch.Tensor, float]:
    """HF generate (greedy, with its cache); returns the new ids and the
    smallest top-1/top-2 gap relative to max |logit| over the steps."""
    out = model.generate(prompt[None], max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                         eos_token_id=None, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    margin = min(((s[0].topk(2).values[0] - s[0].topk(2).values[1]) / s[0].abs().max()).item() for s in out.logits)
    return out.sequences[0, prompt.numel():], margin


def references(model: Qwen3ForCausalLM, gen: torch.Generator) -> tuple[dict, float]:
    ref = {}
    margins = []
    for name, n in PROMPT_LENS.items():
        ids = torch.randint(0, VOCAB, (n,), generator=gen)
        ref[f"prompt_{name}"] = ids
        ref[f"logits_{name}"] = model(ids[None], use_cache=False).logits[0].float()
        ref[f"greedy_{name}"], m = greedy(model, ids)
        margins.append(m)
    ids = ref["prompt_b"]
    cache = DynamicCache(config=model.config)
    model(ids[None, :CHUNK_SPLIT], cache=cache, use_cache=True)
    ref["chunk_split_b"] = torch.tensor([CHUNK_SPLIT])
    ref["chunk_logits_b"] = model(ids[None, CHUNK_SPLIT:], cache=cache, use_cache=True).logits[0].float()
    return ref, min(margins)


def main() -> None:
    if transformers.__version__ != TRANSFORMERS_VERSION:
        print(f"note: transformers {transformers.__version__}, fixtures were made with {TRANSFORMERS_VERSION}")
    from safetensors.torch import save_file

    torch.set_grad_enabled(False)
    for case in CASES:
        d = OUT / case["name"]
        d.mkdir(parents=True, exist_ok=True)
        gen = torch.Generator().manual_seed(case["seed"])
        model, entries = build_model(case, gen)
        ref, margin = references(model, gen)
        if margin < MIN_MARGIN:
            raise SystemExit(f"{case['name']}: greedy margin {margin:.2e} < {MIN_MARGIN}; pick another seed")
        model.config.to_json_file(d / "config.json", use_diff=False)
        write_dat(d / "model.dat", entries)
        save_file({k: v.contiguous() for k, v in ref.items()}, d / "reference.safetensors")
        diff = (ref["chunk_logits_b"] - ref["logits_b"][CHUNK_SPLIT:]).abs().max().item()
        print(f"{case['name']}: greedy margin {margin:.2e}, HF chunk-vs-full max diff {diff:.2e}, "
              f"max |logit| {ref['logits_b'].abs().max().item():.2f}")


if __name__ == "__main__":
    main()

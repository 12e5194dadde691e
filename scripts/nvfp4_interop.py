"""Independent readers of the two standard NVFP4 checkpoint layouts, used by
scripts/check_nvfp4_export.py and scripts/gen_ct_fixture.py to check this
project's exports and imports against code it does not share.

- compressed-tensors `nvfp4-pack-quantized`: decompressed with the
  `compressed-tensors` package's own building blocks (`unpack_fp4_from_uint8`
  and `dequantize` with the layer's `QuantizationArgs`, the two calls its
  `NVFP4PackedCompressor.decompress` makes). `decompress` itself unpacks to
  bf16, which would round the two-level weights; calling its two steps with
  f32 keeps the check at f32 precision. `decompress` is still run once per
  layer and its bf16 result checked against the f32 one, so a change in the
  library's own path is noticed.
- NVIDIA ModelOpt NVFP4: dequantized with the `nvidia-modelopt` package's
  `NVFP4QTensor.dequantize` when that package is importable; otherwise with
  `modelopt_dequantize_from_docs` below, a reader written from ModelOpt's
  documented layout (NOT ModelOpt's code), and the caller says which was used.

Both return a transformers `Qwen3ForCausalLM` state dict in f32.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def read_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the directory's safetensors files (index or not)."""
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in model_dir.glob("*.safetensors"))
    out = {}
    for name in files:
        with safe_open(str(model_dir / name), framework="pt") as f:
            for key in f.keys():
                out[key] = f.get_tensor(key)
    return out


def qwen3_config(model_dir: Path):
    """The transformers config without its quantization_config (the weights
    handed to it are already dequantized)."""
    from transformers import Qwen3Config

    data = json.loads((model_dir / "config.json").read_text())
    data.pop("quantization_config", None)
    return Qwen3Config(**data)


def ct_dequantize(model_dir: Path) -> dict[str, torch.Tensor]:
    """compressed-tensors directory -> f32 state dict, via the library."""
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    from compressed_tensors.quantization import QuantizationConfig
    from compressed_tensors.quantization.lifecycle.forward import dequantize

    qc = json.loads((model_dir / "config.json").read_text())["quantization_config"]
    config = QuantizationConfig.model_validate(qc)
    if config.format != "nvfp4-pack-quantized":
        raise SystemExit(f"quantization_config.format is {config.format!r}")
    (scheme,) = config.config_groups.values()
    tensors = read_tensors(model_dir)
    out = {}
    for key, t in tensors.items():
        if key.endswith((".weight_scale", ".weight_global_scale", ".input_global_scale")):
            continue
        if not key.endswith(".weight_packed"):
            out[key] = t.float()
            continue
        base = key[: -len(".weight_packed")]
        packed = t
        scale = tensors[f"{base}.weight_scale"]
        gscale = tensors[f"{base}.weight_global_scale"]
        m, n2 = packed.shape
        codes = unpack_fp4_from_uint8(packed, m, n2 * 2, dtype=torch.float32)
        w = dequantize(x_q=codes, scale=scale.to(torch.float32), args=scheme.weights,
                       global_scale=gscale, dtype=torch.float32)
        # The library's own one-call path (bf16) must agree with the f32 one.
        lib = NVFP4PackedCompressor.decompress(
            {"weight_packed": packed, "weight_scale": scale, "weight_global_scale": gscale}, scheme)
        if not torch.equal(lib["weight"].float(), w.to(torch.bfloat16).float()):
            raise SystemExit(f"{base}: NVFP4PackedCompressor.decompress disagrees with its building blocks")
        out[f"{base}.weight"] = w
    return out


def modelopt_dequantize_from_docs(packed, scale, scale_2):
    """NOT ModelOpt's code: ModelOpt's documented NVFP4 layout. `weight` u8
    [out, in/2], element 2j in the low nibble, 2j+1 in the high one, each an
    E2M1 code (bit 3 sign); `weight_scale` float8_e4m3fn [out, in/16];
    `weight_scale_2` f32 (one value); value = e2m1 * (weight_scale * weight_scale_2)."""
    lut = torch.tensor(E2M1, dtype=torch.float32)
    codes = torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(packed.shape[0], -1).long()
    per_block = scale.to(torch.float32) * scale_2.to(torch.float32)
    w = lut[codes].view(packed.shape[0], -1, 16) * per_block.unsqueeze(-1)
    return w.reshape(packed.shape[0], -1)


def modelopt_dequantize(model_dir: Path) -> tuple[dict[str, torch.Tensor], str]:
    """ModelOpt directory -> (f32 state dict, which reader was used)."""
    quant = json.loads((model_dir / "hf_quant_config.json").read_text())["quantization"]
    if quant.get("quant_algo") not in ("NVFP4", "W4A16_NVFP4") or quant.get("group_size") != 16:
        raise SystemExit(f"hf_quant_config.json: unexpected quantization {quant}")
    try:
        from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor

        def deq(packed, scale, scale_2):
            shape = torch.Size([packed.shape[0], packed.shape[1] * 2])
            q = NVFP4QTensor(shape, torch.float32, packed)
            return q.dequantize(dtype=torch.float32, scale=scale, double_scale=scale_2,
                                block_sizes={-1: 16})

        reader = "nvidia-modelopt NVFP4QTensor.dequantize"
    except ImportError:
        deq = modelopt_dequantize_from_docs
        reader = "reader written from ModelOpt's documentation (nvidia-modelopt not importable)"
    tensors = read_tensors(model_dir)
    out = {}
    for key, t in tensors.items():
        if key.endswith((".weight_scale", ".weight_scale_2", ".input_scale")):
            continue
        base = key[: -len(".weight")]
        if t.dtype == torch.uint8:
            out[key] = deq(t, tensors[f"{base}.weight_scale"], tensors[f"{base}.weight_scale_2"]).float()
        else:
            out[key] = t.float()
    return out, reader


def qwen3_logits(model_dir: Path, state: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """transformers' Qwen3ForCausalLM (f32, CPU, eager) with `state`: logits [T, V]."""
    from transformers import Qwen3ForCausalLM

    cfg = qwen3_config(model_dir)
    model = Qwen3ForCausalLM._from_config(cfg, attn_implementation="eager", dtype=torch.float32).eval()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    if missing or unexpected:
        raise SystemExit(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    if cfg.tie_word_embeddings:
        model.tie_weights()
    with torch.no_grad():
        return model(ids[None], use_cache=False).logits[0].float()

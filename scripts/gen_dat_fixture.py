#!/usr/bin/env python3
"""Generates crates/dat-format/tests/fixtures/tiny/: a tiny (partial, not
runnable) Qwen3-shaped source model and the `.dat` files the original tools
would have made from it, written by the independent Python code of
scripts/nvfp4_dat.py (no Rust involved), so the Rust reader, writer,
converter and NVFP4 codecs are checked against a second implementation.

Outputs (fixed seed, so regenerating gives the same bytes):
  source/                     Hugging Face layout, two shards + index + config.json
  tiny.dat                    the source converted as the original tools did:
                              projections and lm_head -> .weight.qdata (u8) +
                              .weight.scale (E4M3), everything else raw, source order
  packed.dat                  one NVFP4 pair in the other spellings the original
                              accepted: `<name>.qdata` stored as elem 100 (f4_e2m1x2)
  expected.safetensors        f32 dequantized weight of every pair (HF key) and
                              every raw tensor in its source dtype

Run: .venv/bin/python scripts/gen_dat_fixture.py
"""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nvfp4_dat as nd  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates" / "dat-format" / "tests" / "fixtures" / "tiny"
SEED = 20250601

QUANTIZED = (
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
    "lm_head.weight",
)

ST_DTYPE = {
    torch.bool: "BOOL", torch.uint8: "U8", torch.int8: "I8", torch.float8_e4m3fn: "F8_E4M3",
    torch.int16: "I16", torch.float16: "F16", torch.bfloat16: "BF16", torch.int32: "I32",
    torch.float32: "F32", torch.float64: "F64", torch.int64: "I64",
}


def edge_case_projection(g: torch.Generator) -> torch.Tensor:
    """q_proj [48, 32] bf16: random rows plus blocks that hit every rounding rule."""
    w = torch.randn(48, 32, generator=g) * 0.05
    w[0, :16] = 0.0  # all-zero block: scale 0, codes +0
    w[0, 16:] = torch.randn(16, generator=g) * 1e-3  # amax/6 < 2^-10: scale rounds to 0
    # amax 6 -> scale exactly 1.0; every E2M1 tie, both signs, and -0.0.
    w[1, :16] = torch.tensor([6, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, -0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5, -0.0])
    w[1, 16:] = torch.randn(16, generator=g) * 5000  # amax/6 > 448: saturated scale, clamped codes
    w[2, :16] = torch.randn(16, generator=g) * 0.01  # E4M3 subnormal scales
    return w.to(torch.bfloat16)


def source_tensors() -> tuple[list[tuple[str, torch.Tensor]], list[tuple[str, torch.Tensor]]]:
    """The two shards of the source model, each in payload order."""
    g = torch.Generator().manual_seed(SEED)
    shard1 = [
        ("model.embed_tokens.weight", (torch.randn(64, 32, generator=g) * 0.02).to(torch.bfloat16)),
        ("model.layers.0.input_layernorm.weight", 1.0 + 0.1 * torch.randn(32, generator=g)),
        ("model.layers.0.self_attn.q_proj.weight", edge_case_projection(g)),
        ("extra.f16", torch.randn(5, generator=g).to(torch.float16)),
        # Above 2^24: misreading elem 3 as f32 (the original's defect) changes these values.
        ("extra.i32", torch.tensor([16777217, -1, 2**31 - 1, -(2**31)], dtype=torch.int32)),
        ("extra.u8", torch.randint(0, 256, (3, 5), generator=g, dtype=torch.uint8)),
        ("extra.scalar_f32", torch.tensor(3.25)),
    ]
    shard2 = [
        ("model.layers.0.mlp.down_proj.weight", (torch.randn(32, 64, generator=g) * 0.05).to(torch.bfloat16)),
        ("model.norm.weight", 1.0 + 0.1 * torch.randn(32, generator=g)),
        ("lm_head.weight", (torch.randn(64, 32, generator=g) * 0.05).to(torch.bfloat16)),
        ("extra.i8", torch.randint(-128, 128, (7,), generator=g, dtype=torch.int8)),
        ("extra.i16", torch.randint(-32768, 32768, (2, 3), generator=g, dtype=torch.int16)),
        ("extra.i64", torch.tensor([[2**53 + 1, -(2**63)], [2**63 - 1, 7]], dtype=torch.int64)),
        ("extra.f64", torch.randn(3, generator=g, dtype=torch.float64)),
        ("extra.bool", torch.tensor([True, False, False, True, True, False])),
        ("extra.f8_e4m3", torch.randint(0, 256, (2, 8), generator=g, dtype=torch.uint8).view(torch.float8_e4m3fn)),
    ]
    return shard1, shard2


def write_safetensors(path: Path, tensors: list[tuple[str, torch.Tensor]]) -> None:
    """Minimal safetensors writer (the `safetensors` package is not installed):
    u64 header length, JSON header padded to 8 bytes, payloads in list order."""
    header, offset, payloads = {"__metadata__": {"format": "pt"}}, 0, []
    for name, t in tensors:
        data = nd.tensor_payload(t)
        header[name] = {"dtype": ST_DTYPE[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        payloads.append(data)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"".join(payloads))


def dat_entries(tensors: list[tuple[str, torch.Tensor]]) -> list[tuple]:
    """What the original tools wrote for a source model, in source order."""
    out = []
    for name, t in tensors:
        if name in QUANTIZED:
            qdata, scale = nd.quantize_nvfp4(t.float())
            out += [(f"{name}.qdata", qdata, nd.ELEM_U8), (f"{name}.scale", scale, nd.ELEM_F8_E4M3)]
        else:
            out.append((name, t))
    return out


def self_check() -> None:
    """Cross-checks the independent codecs against torch where torch has them."""
    x = torch.cat([torch.randn(4096) * s for s in (1e-4, 1e-2, 1.0, 100.0)]).float().clamp(-448, 448)
    ours = nd.e4m3_encode(x)
    torchs = x.to(torch.float8_e4m3fn).view(torch.uint8)
    assert torch.equal(ours, torchs), "e4m3_encode disagrees with torch.float8_e4m3fn"
    every = torch.arange(256, dtype=torch.uint8)
    finite = (every & 0x7F) != 0x7F
    assert torch.equal(nd.e4m3_decode(every)[finite], every.view(torch.float8_e4m3fn).float()[finite])
    assert nd.e4m3_encode(torch.tensor([1000.0])).item() == 0x7E
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -0.0])
    assert nd.e2m1_encode(ties).tolist() == [0, 2, 2, 4, 4, 6, 6, 7, 8]


def main() -> None:
    self_check()
    shard1, shard2 = source_tensors()
    src = OUT / "source"
    src.mkdir(parents=True, exist_ok=True)
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    for name, shard in zip(names, (shard1, shard2)):
        write_safetensors(src / name, shard)
    total = sum(len(nd.tensor_payload(t)) for _, t in shard1 + shard2)
    weight_map = {k: names[i] for i, shard in enumerate((shard1, shard2)) for k, _ in shard}
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (src / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config = {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 64, "hidden_size": 32,
        "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 3, "num_key_value_heads": 1,
        "head_dim": 16, "rms_norm_eps": 1e-6, "rope_theta": 5000000, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "_comment": "tiny partial fixture model for dat-format tests; not runnable",
    }
    (src / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    nd.write_dat(OUT / "tiny.dat", dat_entries(shard1 + shard2))

    g = torch.Generator().manual_seed(SEED + 1)
    packed_w = torch.randn(8, 32, generator=g)
    pq, ps = nd.quantize_nvfp4(packed_w)
    nd.write_dat(OUT / "packed.dat", [("packed.qdata", pq, nd.ELEM_F4_E2M1X2), ("packed.scale", ps, nd.ELEM_F8_E4M3)])

    expected = []
    for name, t in shard1 + shard2:
        if name in QUANTIZED:
            expected.append((name, nd.dequantize_nvfp4(*nd.quantize_nvfp4(t.float()))))
        else:
            expected.append((name, t))
    expected.append(("packed.weight", nd.dequantize_nvfp4(pq, ps)))
    write_safetensors(OUT / "expected.safetensors", expected)

    # The written .dat must read back as exactly what was meant to be written.
    back = nd.read_dat(OUT / "tiny.dat")
    assert [e.key for e in back] == [e[0] for e in dat_entries(shard1 + shard2)]
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({size} bytes, {len(back)} entries in tiny.dat)")


if __name__ == "__main__":
    main()

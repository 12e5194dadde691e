"""Independent NVFP4 quantizer and `.dat` writer, in pure Python + torch.

This module re-implements, from the rules in docs/Formats.md (the original's
reference, restated) and without any Rust code, what the original tools did
when they exported a model:

* ``quantize_nvfp4(w)``: NVFP4 weight quantization. Per row, blocks of 16
  consecutive elements along ``in`` share one FP8 E4M3FN scale
  ``E4M3(amax / 6)`` (round to nearest even, saturating at 448); each element
  becomes the E2M1 code nearest to ``x / scale`` (magnitudes
  {0, .5, 1, 1.5, 2, 3, 4, 6}, clamped to 6, ties to the even code, sign from
  the sign bit so -0.0 gives code 8). Byte ``j`` of a row packs element ``2j``
  in its LOW nibble and ``2j + 1`` in its high nibble. A block whose scale
  rounds to zero stores +0 codes (``x / 0`` has no meaning; this is the
  workspace convention, shared with ``nvfp4-kernels``).
* ``write_dat(path, entries)``: the `.dat` layout: no magic, no version, no
  alignment; unsigned LEB128 varints for ``count`` and, per entry,
  ``key_len``, UTF-8 key, ``elem_type``, ``ndim``, dims; then the payload,
  little-endian, row-major.

Tests in the Rust workspace compare their reader, writer and quantizer
against files this module writes, and the model parity fixtures import it,
so the functions below are a stable API: add to it, do not change it.

Stable API:
    ELEM_U8, ELEM_I8, ... ELEM_F8_E4M3   element type codes
    ELEM_SIZE                            code -> bytes per element
    E2M1_VALUES                          code -> value (16 entries)
    e4m3_encode(x) / e4m3_decode(b)      FP8 E4M3FN codec (tensors)
    e2m1_encode(x)                       nearest E2M1 code (tensors)
    quantize_nvfp4(w) -> (qdata, scale)  uint8 [out, in/2], uint8 [out, in/16]
    dequantize_nvfp4(qdata, scale)       float32 [out, in]
    tensor_payload(t) -> bytes           raw little-endian bytes of a tensor
    elem_code_of(dtype) -> int           `.dat` code of a torch dtype
    write_dat(path, entries)             entries: (key, tensor[, elem_code])
    read_dat(path) -> list[DatEntry]     a plain reader, for checks
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

if sys.byteorder != "little":  # payloads are written from native memory
    raise ImportError("nvfp4_dat writes little-endian payloads from native memory; big-endian hosts are unsupported")

# ---------------------------------------------------------------- elem types
ELEM_U8 = 0
ELEM_I8 = 1
ELEM_I16 = 2
ELEM_I32 = 3
ELEM_I64 = 4
ELEM_F16 = 5
ELEM_F32 = 6
ELEM_F64 = 7
ELEM_BOOL = 11
ELEM_BF16 = 15
ELEM_F4_E2M1X2 = 100  # two E2M1 codes per byte, shape [out, in/2]
ELEM_F8_E4M3 = 101

ELEM_SIZE = {
    ELEM_U8: 1, ELEM_I8: 1, ELEM_I16: 2, ELEM_I32: 4, ELEM_I64: 8, ELEM_F16: 2, ELEM_F32: 4,
    ELEM_F64: 8, ELEM_BOOL: 1, ELEM_BF16: 2, ELEM_F4_E2M1X2: 1, ELEM_F8_E4M3: 1,
}

_CODE_OF_DTYPE = {
    torch.uint8: ELEM_U8, torch.int8: ELEM_I8, torch.int16: ELEM_I16, torch.int32: ELEM_I32,
    torch.int64: ELEM_I64, torch.float16: ELEM_F16, torch.float32: ELEM_F32,
    torch.float64: ELEM_F64, torch.bool: ELEM_BOOL, torch.bfloat16: ELEM_BF16,
    torch.float8_e4m3fn: ELEM_F8_E4M3,
}


def elem_code_of(dtype: torch.dtype) -> int:
    """The `.dat` element type code that stores tensors of ``dtype``."""
    try:
        return _CODE_OF_DTYPE[dtype]
    except KeyError:
        raise ValueError(f"dtype {dtype} has no .dat element type") from None


# ---------------------------------------------------------------- E2M1
E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
E2M1_VALUES = E2M1_MAGNITUDES + tuple(-m for m in E2M1_MAGNITUDES)  # bit 3 = sign


def e2m1_encode(x: torch.Tensor) -> torch.Tensor:
    """Nearest E2M1 code (uint8, 0..15) of each element of a finite tensor.

    The distance to every magnitude is computed in float64, where it is exact
    for any float32 input at most 6 (larger inputs clamp to 6 first), so an
    exact tie is seen as one and goes to the even code.
    """
    sign = torch.signbit(x).to(torch.uint8) << 3
    a = x.abs().to(torch.float64).clamp(max=6.0)
    mags = torch.tensor(E2M1_MAGNITUDES, dtype=torch.float64)
    dist = (a.unsqueeze(-1) - mags).abs()  # [..., 8]
    best = dist.min(dim=-1, keepdim=True).values
    cand = dist == best
    first = cand.to(torch.int64).argmax(dim=-1)  # lowest nearest code
    nxt = (first + 1).clamp(max=7)
    tie_up = cand.gather(-1, nxt.unsqueeze(-1)).squeeze(-1) & (first < 7) & (first % 2 == 1)
    mag = torch.where(tie_up, first + 1, first)
    return mag.to(torch.uint8) | sign


# ---------------------------------------------------------------- E4M3FN
E4M3_MAX = 448.0


def e4m3_decode(b: torch.Tensor) -> torch.Tensor:
    """Float32 value of each FP8 E4M3FN byte: bias 7, exponent 0 subnormal
    (m/8 * 2^-6), no infinities, only 0x7F and 0xFF are NaN."""
    b = b.to(torch.int64)
    sign = torch.where(b >= 128, -1.0, 1.0).to(torch.float64)
    exp = (b >> 3) & 0xF
    man = (b & 7).to(torch.float64)
    normal = (1.0 + man / 8.0) * torch.pow(2.0, (exp - 7).to(torch.float64))
    sub = man / 8.0 * 2.0 ** -6
    val = sign * torch.where(exp == 0, sub, normal)
    val = torch.where((exp == 15) & ((b & 7) == 7), torch.nan, val)
    return val.to(torch.float32)  # every E4M3 value is exact in float32


def e4m3_encode(x: torch.Tensor) -> torch.Tensor:
    """FP8 E4M3FN byte of each finite float32 element: round to nearest,
    ties to even, |x| >= 448 saturates to 448 (0x7E / 0xFE)."""
    x = x.to(torch.float32)
    if not torch.isfinite(x).all():
        raise ValueError("e4m3_encode: non-finite input")
    sign = torch.signbit(x).to(torch.int64) << 7
    m = x.abs().to(torch.float64)  # exact; scaling by powers of two stays exact
    # Exponent of the leading bit: m = f * 2^e2 with f in [0.5, 1).
    _, e2 = torch.frexp(torch.where(m > 0, m, torch.ones_like(m)))
    e = (e2.to(torch.int64) - 1).clamp(min=-6)  # below 2^-6: subnormal grid k * 2^-9
    # Significand in units of the last E4M3 mantissa bit: [8, 16) for normals.
    steps = torch.round(m * torch.pow(2.0, (3 - e).to(torch.float64)))  # round half to even
    carry = steps >= 16  # rounding up to the next binade
    e = torch.where(carry, e + 1, e)
    steps = torch.where(carry, steps / 2, steps).to(torch.int64)
    is_normal = steps >= 8
    code = torch.where(is_normal, ((e + 7) << 3) | (steps - 8), steps)
    code = torch.where(m >= E4M3_MAX, torch.full_like(code, 0x7E), code)
    return (code | sign).to(torch.uint8)


# ---------------------------------------------------------------- NVFP4
BLOCK = 16


def quantize_nvfp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantizes a finite ``[out, in]`` float tensor (``in % 16 == 0``) to
    NVFP4. Returns ``(qdata, scale)``: uint8 ``[out, in/2]`` packed codes
    and uint8 ``[out, in/16]`` E4M3 scale bytes."""
    if w.dim() != 2 or w.shape[1] % BLOCK != 0:
        raise ValueError(f"quantize_nvfp4: need [out, in] with in % 16 == 0, got {list(w.shape)}")
    x = w.detach().to("cpu", torch.float32)
    if not torch.isfinite(x).all():
        raise ValueError("quantize_nvfp4: non-finite input")
    rows, cols = x.shape
    blocks = x.reshape(rows, cols // BLOCK, BLOCK)
    amax = blocks.abs().amax(dim=-1)  # float32
    scale = e4m3_encode(amax / 6.0)  # float32 division, as the spec says
    s = e4m3_decode(scale).unsqueeze(-1)  # [rows, cols/16, 1] float32
    safe = torch.where(s == 0, torch.ones_like(s), s)
    codes = e2m1_encode(blocks / safe)  # float32 division
    codes = torch.where(s == 0, torch.zeros_like(codes), codes).reshape(rows, cols)
    qdata = codes[:, 0::2] | (codes[:, 1::2] << 4)  # even element in the LOW nibble
    return qdata.contiguous(), scale.contiguous()


def dequantize_nvfp4(qdata: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Float32 ``[out, in]`` of an NVFP4 pair: ``e2m1(code) * e4m3(scale)``
    (each product is exact in float32)."""
    rows = qdata.shape[0]
    q = qdata.to(torch.int64)
    codes = torch.stack([q & 0xF, q >> 4], dim=-1).reshape(rows, -1)  # [out, in]
    values = torch.tensor(E2M1_VALUES, dtype=torch.float32)[codes]
    s = e4m3_decode(scale).repeat_interleave(BLOCK, dim=1)
    return values * s


# ---------------------------------------------------------------- .dat files
def _varint(value: int) -> bytes:
    """Unsigned LEB128, minimal: 7 bits a byte, low group first."""
    if value < 0:
        raise ValueError(f"varint of negative {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value == 0:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def tensor_payload(t: torch.Tensor) -> bytes:
    """Raw little-endian row-major bytes of ``t`` (any dtype, on any device)."""
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes()


@dataclass(frozen=True)
class DatEntry:
    """One `.dat` entry: key, element type code, shape and payload bytes."""

    key: str
    elem: int
    shape: tuple[int, ...]
    payload: bytes


def _entry(item: DatEntry | Sequence) -> DatEntry:
    if isinstance(item, DatEntry):
        return item
    key, t, *rest = item
    elem = rest[0] if rest else elem_code_of(t.dtype)
    if ELEM_SIZE[elem] != t.element_size():
        raise ValueError(f"{key}: elem {elem} has {ELEM_SIZE[elem]}-byte elements, tensor has {t.element_size()}")
    return DatEntry(key, elem, tuple(t.shape), tensor_payload(t))


def write_dat(path: str | os.PathLike, entries: Iterable[DatEntry | Sequence]) -> None:
    """Writes a `.dat` file as the original tools did, entries in the given order.

    Each entry is a ``DatEntry`` or a tuple ``(key, tensor)`` (element type
    from the dtype) or ``(key, tensor, elem_code)`` (for example a uint8
    tensor stored as ``ELEM_F8_E4M3`` scales or ``ELEM_F4_E2M1X2`` pairs).
    The file is written beside ``path`` and renamed into place.
    """
    items = [_entry(e) for e in entries]
    keys = [e.key for e in items]
    if len(set(keys)) != len(keys):
        raise ValueError("write_dat: duplicate keys")
    tmp = f"{os.fspath(path)}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(_varint(len(items)))
        for e in items:
            numel = 1
            for d in e.shape:
                numel *= d
            if numel * ELEM_SIZE[e.elem] != len(e.payload):
                raise ValueError(f"{e.key}: payload of {len(e.payload)} bytes for shape {e.shape}")
            key = e.key.encode("utf-8")
            f.write(_varint(len(key)) + key + _varint(e.elem) + _varint(len(e.shape)))
            f.write(b"".join(_varint(d) for d in e.shape))
            f.write(e.payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise ValueError("read_dat: truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def read_dat(path: str | os.PathLike) -> list[DatEntry]:
    """Reads every entry of a `.dat` file (a plain reader for checks; trusts the file)."""
    data = open(path, "rb").read()
    count, pos = _read_varint(data, 0)
    out = []
    for _ in range(count):
        n, pos = _read_varint(data, pos)
        key = data[pos:pos + n].decode("utf-8")
        pos += n
        elem, pos = _read_varint(data, pos)
        ndim, pos = _read_varint(data, pos)
        shape = []
        for _ in range(ndim):
            d, pos = _read_varint(data, pos)
            shape.append(d)
        numel = 1
        for d in shape:
            numel *= d
        size = numel * ELEM_SIZE[elem]
        out.append(DatEntry(key, elem, tuple(shape), data[pos:pos + size]))
        pos += size
    if pos != len(data):
        raise ValueError(f"read_dat: {len(data) - pos} trailing bytes")
    return out

// Shared device code of every NVFP4 kernel module. The Rust loader prepends this
// file to each .cu source before NVRTC compiles it (no include path is needed),
// so nothing here may depend on CUDA headers.
//
// Bit-exactness contract: every scalar codec below is a line-by-line port of
// crates/nvfp4-kernels/src/format.rs, evaluated in IEEE binary32 with correctly
// rounded division and no FMA contraction (the loader passes --fmad=false and
// never --use_fast_math).

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define F32_MIN_NORMAL 1.17549435082228750797e-38f
#define TWO_LEVEL_DIVISOR 2688.0f /* 6 * 448 */

// format.rs e4m3_to_f32: bias 7, exponent 0 subnormal (m/8 * 2^-6), only
// 0x7F/0xFF are NaN.
__device__ __forceinline__ float e4m3_to_f32(u32 byte) {
    const u32 e = (byte >> 3) & 0xFu;
    const u32 m = byte & 7u;
    if (e == 15u && m == 7u) return __uint_as_float(0x7FC00000u);
    // Normal: (1 + m/8) * 2^(e-7), built exactly from its bits.
    const float mag = (e == 0u) ? (float)m * (1.0f / 512.0f) : __uint_as_float(((e + 120u) << 23) | (m << 20));
    return (byte & 0x80u) ? -mag : mag;
}

// format.rs f32_to_e4m3: RNE, saturates at +-448, NaN -> 0x7F.
__device__ __forceinline__ u32 f32_to_e4m3(float x) {
    if (isnan(x)) return 0x7Fu;
    const u32 sign = (__float_as_uint(x) >> 24) & 0x80u;
    const float m = fabsf(x);
    if (m >= 448.0f) return sign | 0x7Eu;
    if (m < 0.015625f) return sign | (u32)rintf(m * 512.0f);
    const u32 bits = __float_as_uint(m);
    const u32 lsb = (bits >> 20) & 1u;
    const u32 rounded = bits + 0x0007FFFFu + lsb;
    const u32 e = (rounded >> 23) - 127u + 7u;
    const u32 man = (rounded >> 20) & 7u;
    return sign | (e << 3) | man;
}

// format.rs f32_to_e2m1: nearest magnitude, ties to the even code, clamp at 6,
// sign from the sign bit, NaN -> 0.
__device__ __forceinline__ u32 f32_to_e2m1(float x) {
    if (isnan(x)) return 0u;
    const float m = fabsf(x);
    const u32 mag = (u32)(m > 0.25f) + (u32)(m >= 0.75f) + (u32)(m > 1.25f) + (u32)(m >= 1.75f) +
                    (u32)(m > 2.5f) + (u32)(m >= 3.5f) + (u32)(m > 5.0f);
    return mag | ((__float_as_uint(x) >> 28) & 8u);
}

// E2M1 code -> f32. The 3 magnitude bits placed at the top of the f32 exponent
// and mantissa give value * 2^-126 (code 1, 0.5, lands on a subnormal); one
// exact multiply by 2^126 restores it (no flush-to-zero: --ftz=false).
__device__ __forceinline__ float e2m1_to_f32(u32 code) {
    return __uint_as_float(((code & 8u) << 28) | ((code & 7u) << 22)) * 0x1p126f;
}

// format.rs global_scale_for_amax.
__device__ __forceinline__ float global_scale_for_amax(float amax) {
    const float g = amax / TWO_LEVEL_DIVISOR;
    return (g >= F32_MIN_NORMAL && isfinite(g)) ? g : 1.0f;
}

__device__ __forceinline__ float bf16_to_f32(u32 h) { return __uint_as_float(h << 16); }

// Round to nearest even, as torch's float -> bfloat16 conversion.
__device__ __forceinline__ u32 f32_to_bf16(float f) {
    u16 h;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return (u32)h;
}

// ---------------------------------------------------------------------------
// f32_to_e2m1(x / d) for every x of a block without dividing.
//
// fl(q) is the correctly rounded quotient q = |x| / d (d > 0). Each E2M1
// threshold t has an even f32 mantissa, so with u the f32 spacing at t:
//   fl(q) >  t  <=>  q >  t + u/2        (a tie at t + u/2 rounds down to t)
//   fl(q) >= t  <=>  q >= t - u/2        (a tie at t - u/2 rounds up to t)
// and, |x| being an f32, |x| > d*m <=> |x| > RD(d*m), |x| >= d*m <=> |x| >= RU(d*m).
// d*m = d*t + d*(+-u/2) is formed exactly inside one fma and rounded once in
// the needed direction; d*(u/2) is exact for d >= 2^-100 (callers divide
// below that). The thresholds are monotone, so 3 comparisons find the code.
struct E2m1Thresholds {
    float t[7];
};

__device__ __forceinline__ E2m1Thresholds e2m1_thresholds(float d) {
    E2m1Thresholds r;
    r.t[0] = __fmaf_rd(d, 0.25f, d * 0x1p-26f);    // >  0.25
    r.t[1] = __fmaf_ru(d, 0.75f, -(d * 0x1p-25f)); // >= 0.75
    r.t[2] = __fmaf_rd(d, 1.25f, d * 0x1p-24f);    // >  1.25
    r.t[3] = __fmaf_ru(d, 1.75f, -(d * 0x1p-24f)); // >= 1.75
    r.t[4] = __fmaf_rd(d, 2.5f, d * 0x1p-23f);     // >  2.5
    r.t[5] = __fmaf_ru(d, 3.5f, -(d * 0x1p-23f));  // >= 3.5
    r.t[6] = __fmaf_rd(d, 5.0f, d * 0x1p-22f);     // >  5
    return r;
}

__device__ __forceinline__ u32 e2m1_code_by_thresholds(float x, const E2m1Thresholds& T) {
    const float a = fabsf(x);
    const bool b2 = a >= T.t[3];
    const bool b1 = a >= (b2 ? T.t[5] : T.t[1]);
    const float lo = b2 ? (b1 ? T.t[6] : T.t[4]) : (b1 ? T.t[2] : T.t[0]);
    const bool b0 = a > lo;
    const u32 code = (b2 ? 4u : 0u) | (b1 ? 2u : 0u) | (b0 ? 1u : 0u) | ((__float_as_uint(x) >> 28) & 8u);
    return isnan(x) ? 0u : code;
}

// Smallest block step for which the thresholds above are exact.
#define E2M1_THRESHOLD_MIN_STEP 0x1p-100f

// ---------------------------------------------------------------------------
// bf16 activations (decode.cu, train.cu): values travel as u16 bits, math is f32.

#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// EPL consecutive bf16 -> f32 with one vector load (p aligned to 2*EPL bytes).
template <int EPL>
__device__ __forceinline__ void load_bf16(const u16* p, float (&out)[EPL]) {
    if constexpr (EPL == 8) {
        const uint4 r = *reinterpret_cast<const uint4*>(p);
        const u32 w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            out[2 * i] = bf16_to_f32(w[i] & 0xFFFFu);
            out[2 * i + 1] = bf16_to_f32(w[i] >> 16);
        }
    } else if constexpr (EPL == 4) {
        const uint2 r = *reinterpret_cast<const uint2*>(p);
        out[0] = bf16_to_f32(r.x & 0xFFFFu);
        out[1] = bf16_to_f32(r.x >> 16);
        out[2] = bf16_to_f32(r.y & 0xFFFFu);
        out[3] = bf16_to_f32(r.y >> 16);
    } else {
#pragma unroll
        for (int e = 0; e < EPL; ++e) out[e] = bf16_to_f32(p[e]);
    }
}

// f32 -> EPL consecutive bf16 (RNE), one vector store for EPL == 8.
template <int EPL>
__device__ __forceinline__ void store_bf16(u16* p, const float (&v)[EPL]) {
    if constexpr (EPL == 8) {
        u32 w[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) w[i] = f32_to_bf16(v[2 * i]) | (f32_to_bf16(v[2 * i + 1]) << 16);
        const uint4 r = {w[0], w[1], w[2], w[3]};
        *reinterpret_cast<uint4*>(p) = r;
    } else {
#pragma unroll
        for (int e = 0; e < EPL; ++e) p[e] = (u16)f32_to_bf16(v[e]);
    }
}

// bf16(silu(g)) as f32: torch's CUDA silu (x / (1 + exp(-x)) in f32), rounded
// once, as `gate.silu()` in bf16 returns it.
__device__ __forceinline__ float silu_bf16(float g) {
    return bf16_to_f32(f32_to_bf16(g / (1.0f + expf(-g))));
}

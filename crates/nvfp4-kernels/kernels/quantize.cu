// Quantize f32/bf16 -> NVFP4 (packed codes + E4M3 block scales), fused
// fake-quantization dequant(quant(x)) for the straight-through estimator, and
// the tensor amax + first-non-finite scan that two-level mode needs first.
//
// Layout: each thread owns 16 bytes of input (4 f32 or 8 bf16 elements); the
// LPB = 16 / EPT neighbouring lanes that share one 16-element block agree on
// its amax with xor-shuffles. Blocks never straddle rows (cols % 16 == 0), so
// the tensor is processed as one flat array.

template <bool IN_BF16>
struct In16 {
    static constexpr int EPT = IN_BF16 ? 8 : 4;
    __device__ __forceinline__ static void load(const void* base, u64 group, bool valid, float (&v)[EPT]) {
        uint4 r = make_uint4(0u, 0u, 0u, 0u);
        if (valid) r = __ldg(reinterpret_cast<const uint4*>(base) + group);
        const u32 w[4] = {r.x, r.y, r.z, r.w};
        if (IN_BF16) {
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                v[2 * i] = bf16_to_f32(w[i] & 0xFFFFu);
                v[2 * i + 1] = bf16_to_f32(w[i] >> 16);
            }
        } else {
#pragma unroll
            for (int i = 0; i < 4; ++i) v[i] = __uint_as_float(w[i]);
        }
    }
};

// OUT: 0 = no dequantized output, 1 = bf16, 2 = f32.
template <int OUT, int EPT>
__device__ __forceinline__ void store_deq(void* deq, u64 group, const float (&d)[EPT]) {
    if (OUT == 1) {
        u32 h[EPT / 2];
#pragma unroll
        for (int i = 0; i < EPT / 2; ++i) h[i] = f32_to_bf16(d[2 * i]) | (f32_to_bf16(d[2 * i + 1]) << 16);
        if (EPT == 8) reinterpret_cast<uint4*>(deq)[group] = make_uint4(h[0], h[1], h[2], h[3]);
        else reinterpret_cast<uint2*>(deq)[group] = make_uint2(h[0], h[1]);
    } else if (OUT == 2) {
        uint4* p = reinterpret_cast<uint4*>(deq) + group * (EPT / 4);
#pragma unroll
        for (int i = 0; i < EPT / 4; ++i)
            p[i] = make_uint4(__float_as_uint(d[4 * i]), __float_as_uint(d[4 * i + 1]), __float_as_uint(d[4 * i + 2]),
                              __float_as_uint(d[4 * i + 3]));
    }
}

// amax_bits != nullptr selects two-level mode: g = global_scale_for_amax(amax).
// bad_index != nullptr records the smallest flat index i of a non-finite input
// as max(~i), so that the buffer can start at 0 (one memset, no host copy).
template <bool IN_BF16, int OUT, bool PACKED>
__device__ __forceinline__ void quant_body(const void* __restrict__ x, u8* __restrict__ qdata, u8* __restrict__ scale,
                                           void* __restrict__ deq, u64 n, const u32* __restrict__ amax_bits,
                                           u64* __restrict__ bad_index) {
    constexpr int EPT = In16<IN_BF16>::EPT;
    constexpr int LPB = 16 / EPT;
    const bool two_level = amax_bits != nullptr;
    const float g = two_level ? global_scale_for_amax(__uint_as_float(*amax_bits)) : 1.0f;
    const u64 groups = n / EPT;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    const u32 lane = threadIdx.x & 31u;
    // The bound is warp-uniform so every shuffle sees the full warp.
    for (u64 warp_base = (u64)blockIdx.x * blockDim.x + (threadIdx.x & ~31u); warp_base < groups; warp_base += stride) {
        const u64 i = warp_base + lane;
        const bool valid = i < groups;
        float v[EPT];
        In16<IN_BF16>::load(x, i, valid, v);
        float amax = 0.0f;
        int first_bad = -1;
#pragma unroll
        for (int e = 0; e < EPT; ++e) {
            amax = fmaxf(amax, fabsf(v[e]));
            if (first_bad < 0 && !isfinite(v[e])) first_bad = e;
        }
        int block_bad = first_bad >= 0;
#pragma unroll
        for (int o = 1; o < LPB; o <<= 1) {
            amax = fmaxf(amax, __shfl_xor_sync(0xFFFFFFFFu, amax, o));
            block_bad |= __shfl_xor_sync(0xFFFFFFFFu, block_bad, o);
        }
        if (!valid) continue;
        if (bad_index != nullptr && first_bad >= 0) atomicMax(bad_index, ~((u64)i * EPT + (u64)first_bad));
        u32 s;
        float d;
        if (!two_level) {
            s = f32_to_e4m3(amax / 6.0f);
            d = e4m3_to_f32(s);
        } else {
            s = f32_to_e4m3(amax / 6.0f / g);
            d = e4m3_to_f32(s) * g;
        }
        u32 codes[EPT];
        if (d >= E2M1_THRESHOLD_MIN_STEP) {
            const E2m1Thresholds T = e2m1_thresholds(d);
#pragma unroll
            for (int e = 0; e < EPT; ++e) codes[e] = e2m1_code_by_thresholds(v[e], T);
        } else {
            // Tiny (two-level) steps and d == 0 (which stores +0 codes).
#pragma unroll
            for (int e = 0; e < EPT; ++e) codes[e] = (d != 0.0f) ? f32_to_e2m1(v[e] / d) : 0u;
        }
        if (PACKED) {
            u32 packed = 0;
#pragma unroll
            for (int e = 0; e < EPT; ++e) packed |= codes[e] << (4 * e);
            if (EPT == 8) reinterpret_cast<u32*>(qdata)[i] = packed;
            else reinterpret_cast<u16*>(qdata)[i] = (u16)packed;
            if (lane % LPB == 0) scale[i / LPB] = (u8)s;
        }
        if (OUT != 0) {
            // A block holding a NaN or an infinity comes out as NaN (as the
            // tch-ops fake_quantize does), so a diverging weight stays visible.
            const float sv = block_bad ? __uint_as_float(0x7FC00000u) : e4m3_to_f32(s);
            float out[EPT];
#pragma unroll
            for (int e = 0; e < EPT; ++e) {
                out[e] = e2m1_to_f32(codes[e]) * sv;
                if (two_level) out[e] = out[e] * g;
            }
            store_deq<OUT, EPT>(deq, i, out);
        }
    }
}

#define QUANT_KERNEL(NAME, IN_BF16, OUT, PACKED)                                                                \
    extern "C" __global__ void __launch_bounds__(256)                                                          \
        NAME(const void* x, u8* qdata, u8* scale, void* deq, u64 n, const u32* amax_bits, u64* bad_index) {   \
        quant_body<IN_BF16, OUT, PACKED>(x, qdata, scale, deq, n, amax_bits, bad_index);                      \
    }

QUANT_KERNEL(nvfp4_quantize_f32, false, 0, true)
QUANT_KERNEL(nvfp4_quantize_bf16, true, 0, true)
QUANT_KERNEL(nvfp4_fake_quant_f32_to_bf16, false, 1, false)
QUANT_KERNEL(nvfp4_fake_quant_f32_to_f32, false, 2, false)
QUANT_KERNEL(nvfp4_fake_quant_bf16_to_bf16, true, 1, false)
QUANT_KERNEL(nvfp4_fake_quant_bf16_to_f32, true, 2, false)
QUANT_KERNEL(nvfp4_fake_quant_packed_f32_to_bf16, false, 1, true)
QUANT_KERNEL(nvfp4_fake_quant_packed_f32_to_f32, false, 2, true)
QUANT_KERNEL(nvfp4_fake_quant_packed_bf16_to_bf16, true, 1, true)
QUANT_KERNEL(nvfp4_fake_quant_packed_bf16_to_f32, true, 2, true)

// max |x| over the tensor as f32 bits, plus the smallest flat index i of a
// non-finite element (as max(~i)). A NaN wins the max (its bits exceed
// +inf's), as torch's max does, and global_scale_for_amax(NaN) = 1. Both
// outputs must start at 0.
template <bool IN_BF16>
__device__ __forceinline__ void amax_body(const void* __restrict__ x, u64 n, u32* __restrict__ amax_bits,
                                          u64* __restrict__ bad_index) {
    constexpr int EPT = In16<IN_BF16>::EPT;
    const u64 groups = n / EPT;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    u32 local = 0u;
    u64 first_bad = ~0ull;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < groups; i += stride) {
        float v[EPT];
        In16<IN_BF16>::load(x, i, true, v);
#pragma unroll
        for (int e = 0; e < EPT; ++e) {
            local = max(local, __float_as_uint(fabsf(v[e])));
            if (first_bad == ~0ull && !isfinite(v[e])) first_bad = i * EPT + (u64)e;
        }
    }
    local = __reduce_max_sync(0xFFFFFFFFu, local);
    if ((threadIdx.x & 31u) == 0u && local != 0u) atomicMax(amax_bits, local);
    if (first_bad != ~0ull) atomicMax(bad_index, ~first_bad);
}

extern "C" __global__ void __launch_bounds__(256) nvfp4_amax_f32(const void* x, u64 n, u32* amax_bits, u64* bad_index) {
    amax_body<false>(x, n, amax_bits, bad_index);
}
extern "C" __global__ void __launch_bounds__(256) nvfp4_amax_bf16(const void* x, u64 n, u32* amax_bits, u64* bad_index) {
    amax_body<true>(x, n, amax_bits, bad_index);
}

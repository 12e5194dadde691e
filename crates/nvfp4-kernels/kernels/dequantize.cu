// Dequantize NVFP4 -> bf16 / f32: w = (e2m1(code) * e4m3(scale)) [* g].
//
// Each thread writes one 16-byte output vector per group: 8 bf16 (4 packed
// bytes in) or 4 f32 (2 packed bytes in), so every store is a full 16-byte,
// warp-coalesced write; UNROLL independent groups per thread keep enough loads
// in flight for a purely bandwidth-bound pass.

#define DEQ_UNROLL 4

template <bool OUT_BF16>
__device__ __forceinline__ void dequant_body(const u8* __restrict__ qdata, const u8* __restrict__ scale,
                                             void* __restrict__ out, u64 n, float g, int has_g) {
    constexpr int EPT = OUT_BF16 ? 8 : 4;
    const u64 groups = n / EPT;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 base = (u64)blockIdx.x * blockDim.x + threadIdx.x; base < groups; base += stride * DEQ_UNROLL) {
        u32 q[DEQ_UNROLL], s[DEQ_UNROLL];
#pragma unroll
        for (int u = 0; u < DEQ_UNROLL; ++u) {
            const u64 i = base + (u64)u * stride;
            q[u] = 0u;
            s[u] = 0u;
            if (i < groups) {
                q[u] = OUT_BF16 ? __ldg(reinterpret_cast<const u32*>(qdata) + i)
                                : (u32)__ldg(reinterpret_cast<const u16*>(qdata) + i);
                s[u] = (u32)__ldg(scale + (i * EPT) / 16);
            }
        }
#pragma unroll
        for (int u = 0; u < DEQ_UNROLL; ++u) {
            const u64 i = base + (u64)u * stride;
            if (i >= groups) break;
            const float sv = e4m3_to_f32(s[u]);
            float v[EPT];
#pragma unroll
            for (int e = 0; e < EPT; ++e) {
                v[e] = e2m1_to_f32((q[u] >> (4 * e)) & 0xFu) * sv;
                if (has_g) v[e] = v[e] * g;
            }
            if (OUT_BF16) {
                u32 h[4];
#pragma unroll
                for (int p = 0; p < 4; ++p) h[p] = f32_to_bf16(v[2 * p]) | (f32_to_bf16(v[2 * p + 1]) << 16);
                reinterpret_cast<uint4*>(out)[i] = make_uint4(h[0], h[1], h[2], h[3]);
            } else {
                reinterpret_cast<uint4*>(out)[i] =
                    make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]), __float_as_uint(v[3]));
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(256)
    nvfp4_dequant_bf16(const u8* qdata, const u8* scale, void* out, u64 n, float g, int has_g) {
    dequant_body<true>(qdata, scale, out, n, g, has_g);
}

extern "C" __global__ void __launch_bounds__(256)
    nvfp4_dequant_f32(const u8* qdata, const u8* scale, void* out, u64 n, float g, int has_g) {
    dequant_body<false>(qdata, scale, out, n, g, has_g);
}

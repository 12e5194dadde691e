// W4A16 matmul for few rows of activations (decode, M <= 16):
//   y[M, N] = x[M, K] (bf16) @ W^T,  W NVFP4 [N, K]  ->  y bf16.
// The weights are read once, 16 bytes a lane, dequantized in registers to
// bf16 and fed to tensor cores (mma.sync m16n8k16, f32 accumulation).
//
// Mapping. A warp owns 16 weight rows (the mma's M dimension) and walks K in
// chunks of 128: lane (g = lane/4, t = lane%4) loads 32 consecutive codes
// (16 bytes) of rows g and g+8, starting at k0 = chunk*128 + 32*t. Within an
// mma the order of the 16 k "slots" is free as long as A and B agree, so lane
// t's four slots {2t, 2t+1, 2t+8, 2t+9} of mma j are given the k values of
// its own run: this needs no shuffles of the packed codes. The dequant trick
// (as in Marlin) yields element pairs (i, i+4) of each 8-code word, and the B
// fragment (the activations, tokens as the mma's N dimension) is permuted to
// the same pairs with byte_perm.
//
// Exactness. A code's 3 magnitude bits placed at bf16 bits 6..8 give
// value * 2^-126 exactly; the block scale is pre-multiplied by 2^119 (fits
// bf16: 448 * 2^119 < 2^128), so A = value * scale * 2^-7 is exact in bf16
// (<= 6 significant bits, >= 2^-17). The f32 result is multiplied back by
// 2^7 (times the optional global scale) before the bf16 store.
//
// Split-K inside a block: RB row tiles x WK k-warps (blockDim = 32*RB*WK);
// k-warp kw takes chunks kw, kw+WK, ...; partial sums meet in shared memory.
// DEPTH chunks of loads are in flight ahead of the one being computed.

#define GEMV_MAX_WARPS 16

__device__ __forceinline__ uint4 ld_stream16(const u8* p) {
    uint4 r;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
        : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
        : "l"(p));
    return r;
}

__device__ __forceinline__ uint2 ld_stream8(const u8* p) {
    uint2 r;
    asm("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];" : "=r"(r.x), "=r"(r.y) : "l"(p));
    return r;
}

// out[i] = bf16x2 (element i, element i+4) of the 8 codes in w, each * 2^-126.
__device__ __forceinline__ void fp4x8_to_bf16x2(u32 w, u32 (&out)[4]) {
#pragma unroll
    for (int i = 3; i >= 0; --i) {
        out[i] = (w & 0x80008000u) | ((w & 0x70007000u) >> 6);
        w <<= 4;
    }
}

// Both halves = bf16(e4m3(s) * 2^119); exact (4 significant bits, in range).
__device__ __forceinline__ u32 scale_bf16x2_adj(u32 s) {
    const u32 h = f32_to_bf16(e4m3_to_f32(s) * 0x1p119f);
    return h | (h << 16);
}

__device__ __forceinline__ u32 bf16x2_mul(u32 a, u32 b) {
    u32 d;
    // fma with -0 is an exact multiply that keeps the sign of zero products.
    asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(0x80008000u));
    return d;
}

__device__ __forceinline__ void mma_bf16(float (&c)[4], u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// One chunk of one lane: codes of rows g and g+8 (4 words each), their two
// scale bytes (packed in the low 16 bits), activations of tokens g (and g+8
// when MT == 2).
template <int MT>
struct Chunk {
    u32 q[2][4];
    u32 s[2];
    u32 x[MT][16];
};

// Per-lane running pointers and predicates; advancing a chunk is a few adds.
template <int MT>
struct Cursor {
    const u8* q[2];
    const u8* s[2];
    const u16* x[MT];
    bool row_ok[2];
    bool tok_ok[MT];
    int k0;
};

template <int MT, bool VEC16>
__device__ __forceinline__ void load_chunk(Chunk<MT>& c, const Cursor<MT>& p, int K) {
    // K % 16 == 0, so each 16-code half of the run is either fully in or out.
    const bool in0 = p.k0 < K, in1 = p.k0 + 16 < K;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const bool h0 = in0 && p.row_ok[r], h1 = in1 && p.row_ok[r];
        if (VEC16) {
            // K % 32 == 0 here: h1 == h0, the scale pair is 2-byte aligned.
            const uint4 v = h0 ? ld_stream16(p.q[r]) : make_uint4(0u, 0u, 0u, 0u);
            c.q[r][0] = v.x; c.q[r][1] = v.y; c.q[r][2] = v.z; c.q[r][3] = v.w;
            c.s[r] = h0 ? (u32)__ldg(reinterpret_cast<const u16*>(p.s[r])) : 0u;
        } else {
            const uint2 a = h0 ? ld_stream8(p.q[r]) : make_uint2(0u, 0u);
            const uint2 b = h1 ? ld_stream8(p.q[r] + 8) : make_uint2(0u, 0u);
            c.q[r][0] = a.x; c.q[r][1] = a.y; c.q[r][2] = b.x; c.q[r][3] = b.y;
            c.s[r] = (h0 ? (u32)__ldg(p.s[r]) : 0u) | (h1 ? (u32)__ldg(p.s[r] + 1) << 8 : 0u);
        }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        const bool h0 = in0 && p.tok_ok[mt], h1 = in1 && p.tok_ok[mt];
        const uint4* xp = reinterpret_cast<const uint4*>(p.x[mt]);
        const uint4 z = make_uint4(0u, 0u, 0u, 0u);
        const uint4 v0 = h0 ? __ldg(xp) : z, v1 = h0 ? __ldg(xp + 1) : z;
        const uint4 v2 = h1 ? __ldg(xp + 2) : z, v3 = h1 ? __ldg(xp + 3) : z;
        const uint4 v[4] = {v0, v1, v2, v3};
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            c.x[mt][4 * i] = v[i].x; c.x[mt][4 * i + 1] = v[i].y;
            c.x[mt][4 * i + 2] = v[i].z; c.x[mt][4 * i + 3] = v[i].w;
        }
    }
}

template <int MT>
__device__ __forceinline__ void advance(Cursor<MT>& p, int WK, int K) {
    p.k0 += 128 * WK;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        p.q[r] += 64 * WK;
        p.s[r] += 8 * WK;
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) p.x[mt] += 128 * WK;
}

// slut: e4m3 byte -> bf16x2 of e4m3 * 2^119 (both halves), in shared memory.
template <int MT>
__device__ __forceinline__ void compute_chunk(float (&acc)[MT][4], const Chunk<MT>& c, const u32* slut) {
    const u32 sc[2][2] = {{slut[c.s[0] & 0xFFu], slut[c.s[0] >> 8]}, {slut[c.s[1] & 0xFFu], slut[c.s[1] >> 8]}};
#pragma unroll
    for (int wd = 0; wd < 4; ++wd) {
        u32 p0[4], p1[4];
        fp4x8_to_bf16x2(c.q[0][wd], p0);
        fp4x8_to_bf16x2(c.q[1][wd], p1);
        const u32 s0 = sc[0][wd >> 1], s1 = sc[1][wd >> 1];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const u32 a0 = bf16x2_mul(p0[2 * h], s0);
            const u32 a1 = bf16x2_mul(p1[2 * h], s1);
            const u32 a2 = bf16x2_mul(p0[2 * h + 1], s0);
            const u32 a3 = bf16x2_mul(p1[2 * h + 1], s1);
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                const u32 xa = c.x[mt][4 * wd + h], xb = c.x[mt][4 * wd + h + 2];
                mma_bf16(acc[mt], a0, a1, a2, a3, __byte_perm(xa, xb, 0x5410), __byte_perm(xa, xb, 0x7632));
            }
        }
    }
}

template <int MT, bool VEC16, int DEPTH>
__device__ __forceinline__ void gemv_body(const u16* __restrict__ x, const u8* __restrict__ qdata,
                                          const u8* __restrict__ scale, u16* __restrict__ y, int M, int N, int K,
                                          float out_mul, int RB, int tile_block) {
    __shared__ float red[GEMV_MAX_WARPS * MT * 128];
    __shared__ u32 slut[256];
    for (int i = threadIdx.x; i < 256; i += blockDim.x) slut[i] = scale_bf16x2_adj((u32)i);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int WK = (blockDim.x >> 5) / RB;
    const int rt = warp % RB, kw = warp / RB;
    const int g = lane >> 2, t = lane & 3;
    const int row0 = (tile_block * RB + rt) * 16 + g;
    const int nchunks = (K + 127) >> 7;

    Cursor<MT> cur;
    cur.k0 = kw * 128 + 32 * t;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = row0 + 8 * r;
        cur.row_ok[r] = row < N;
        cur.q[r] = qdata + (u64)row * (u64)(K / 2) + (cur.k0 / 2);
        cur.s[r] = scale + (u64)row * (u64)(K / 16) + (cur.k0 / 16);
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
        const int m = mt * 8 + g;
        cur.tok_ok[mt] = m < M;
        cur.x[mt] = x + (u64)m * (u64)K + cur.k0;
    }
    float acc[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) acc[mt][0] = acc[mt][1] = acc[mt][2] = acc[mt][3] = 0.0f;
    __syncthreads();  // slut ready

    // Software pipeline with DEPTH chunks of loads in flight. The ring of
    // DEPTH + 1 buffers is indexed by compile-time constants (the inner loop is
    // unrolled), so no registers are copied between steps.
    Chunk<MT> buf[DEPTH + 1];
    int c = kw;
#pragma unroll
    for (int d = 0; d < DEPTH; ++d) {
        if (c + d * WK < nchunks) load_chunk<MT, VEC16>(buf[d], cur, K);
        advance(cur, WK, K);
    }
    while (c < nchunks) {
#pragma unroll
        for (int s = 0; s <= DEPTH; ++s) {
            if (c < nchunks) {
                if (c + DEPTH * WK < nchunks) load_chunk<MT, VEC16>(buf[(s + DEPTH) % (DEPTH + 1)], cur, K);
                advance(cur, WK, K);
                compute_chunk<MT>(acc, buf[s], slut);
                c += WK;
            }
        }
    }

    constexpr int PER_WARP = MT * 128;  // [mt][i][lane]
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int i = 0; i < 4; ++i) red[warp * PER_WARP + (mt * 4 + i) * 32 + lane] = acc[mt][i];
    __syncthreads();
    for (int o = threadIdx.x; o < RB * PER_WARP; o += blockDim.x) {
        const int r = o / PER_WARP, rem = o % PER_WARP;
        float sum = 0.0f;
        for (int k = 0; k < WK; ++k) sum += red[(k * RB + r) * PER_WARP + rem];
        const int ln = rem & 31, i = (rem >> 5) & 3, mt = rem >> 7;
        const int row = (tile_block * RB + r) * 16 + (ln >> 2) + ((i & 2) ? 8 : 0);
        const int tok = mt * 8 + 2 * (ln & 3) + (i & 1);
        if (row < N && tok < M) y[(u64)tok * (u64)N + row] = (u16)f32_to_bf16(sum * out_mul);
    }
}

#define GEMV_KERNEL(NAME, MT, VEC16, DEPTH)                                                                     \
    extern "C" __global__ void __launch_bounds__(GEMV_MAX_WARPS * 32)                                          \
        NAME(const u16* x, const u8* qdata, const u8* scale, u16* y, int M, int N, int K, float out_mul, int RB) { \
        gemv_body<MT, VEC16, DEPTH>(x, qdata, scale, y, M, N, K, out_mul, RB, blockIdx.x);                      \
    }

GEMV_KERNEL(nvfp4_gemv_m8_v16_d1, 1, true, 1)
GEMV_KERNEL(nvfp4_gemv_m8_v8_d1, 1, false, 1)
GEMV_KERNEL(nvfp4_gemv_m16_v16_d1, 2, true, 1)
GEMV_KERNEL(nvfp4_gemv_m16_v8_d1, 2, false, 1)
GEMV_KERNEL(nvfp4_gemv_m8_v16_d2, 1, true, 2)
GEMV_KERNEL(nvfp4_gemv_m8_v8_d2, 1, false, 2)
// No depth-2 variant for 16 tokens: its 3 buffers exceed the 128 registers
// a thread has at 512 threads a block (ptxas spills).

// Grouped launch: up to three weights that share the activations x (q/k/v,
// gate/up) in one grid. Blocks [0, b0) compute weight 0, the next b1 weight
// 1, and so on (b_i = ceil(N_i / (16 RB))); N_i = 0 ends the group. One
// launch instead of three fills the GPU better than the small k/v matrices
// alone and saves the launch gaps.
template <bool VEC16, int DEPTH>
__device__ __forceinline__ void gemv_group(const u16* x, int M, int K, int RB, const u8* q0, const u8* s0,
                                           u16* y0, int n0, float m0, const u8* q1, const u8* s1, u16* y1,
                                           int n1, float m1, const u8* q2, const u8* s2, u16* y2, int n2,
                                           float m2) {
    const int rows_per_block = 16 * RB;
    const int b0 = (n0 + rows_per_block - 1) / rows_per_block;
    const int b1 = (n1 + rows_per_block - 1) / rows_per_block;
    int b = blockIdx.x;
    if (b < b0) {
        gemv_body<1, VEC16, DEPTH>(x, q0, s0, y0, M, n0, K, m0, RB, b);
    } else if ((b -= b0) < b1) {
        gemv_body<1, VEC16, DEPTH>(x, q1, s1, y1, M, n1, K, m1, RB, b);
    } else {
        gemv_body<1, VEC16, DEPTH>(x, q2, s2, y2, M, n2, K, m2, RB, b - b1);
    }
}

#define GEMV_GROUP_KERNEL(NAME, VEC16, DEPTH)                                                                  \
    extern "C" __global__ void __launch_bounds__(GEMV_MAX_WARPS * 32)                                          \
        NAME(const u16* x, int M, int K, int RB, const u8* q0, const u8* s0, u16* y0, int n0, float m0,      \
             const u8* q1, const u8* s1, u16* y1, int n1, float m1, const u8* q2, const u8* s2, u16* y2,      \
             int n2, float m2) {                                                                               \
        gemv_group<VEC16, DEPTH>(x, M, K, RB, q0, s0, y0, n0, m0, q1, s1, y1, n1, m1, q2, s2, y2, n2, m2);   \
    }

GEMV_GROUP_KERNEL(nvfp4_gemv_group_m8_v16_d1, true, 1)
GEMV_GROUP_KERNEL(nvfp4_gemv_group_m8_v8_d1, false, 1)
GEMV_GROUP_KERNEL(nvfp4_gemv_group_m8_v16_d2, true, 2)
GEMV_GROUP_KERNEL(nvfp4_gemv_group_m8_v8_d2, false, 2)

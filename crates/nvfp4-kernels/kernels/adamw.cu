// Fused AdamW update (PyTorch's AdamW, decoupled weight decay): one pass over
// a tensor reads param, grad, m and v once and writes param, m and v once.
//
//   g <- gscale * g                         (gradient clipping's coefficient, 1: none)
//   p <- p - decay * p                      (decay = lr * weight_decay)
//   m <- b1 m + (1 - b1) g
//   v <- b2 v + (1 - b2) g^2
//   p <- p - step_size * m / (sqrt(v) / sqrt_bc2 + eps)   (step_size = lr / bc1)
//
// Everything is computed in f32 and rounded once to the storage kind
// (bf16: round to nearest even, as torch). The host derives the f32 constants
// from f64 values (1 - b2 rounded once, not 1 - (float)b2).
//
// Storage variants: param P and grad G are f32 or bf16 (u16 bits); moments are
// dense S (f32 or bf16), or block-wise 8-bit (crates/trainer/src/optim/quant8.rs):
// per 256-element block one f32 absmax and one byte per element indexing a
// 256-entry sorted map; m is stored as m, v as sqrt(v).

#define ADAMW_QBLOCK 256

struct AdamwConsts {
    float gscale, decay, b1, omb1, b2, omb2, step_size, sqrt_bc2, eps;
};

// The update of one element, in place on (p, m, v).
__device__ __forceinline__ void adamw_elem(float& p, float g, float& m, float& v, const AdamwConsts& c) {
    g *= c.gscale;  // exact for the usual gscale == 1
    // One rounding for the decay (skipped when there is none, so p stays exact).
    if (c.decay != 0.0f) p = fmaf(-c.decay, p, p);
    m = fmaf(c.b1, m, c.omb1 * g);
    v = fmaf(c.b2, v, (c.omb2 * g) * g);
    const float denom = sqrtf(v) / c.sqrt_bc2 + c.eps;
    p = p - c.step_size * (m / denom);
}

// Loads and stores of f32 (float) or bf16 (u16 bits), one or four at a time.
template <typename T>
struct Io;

template <>
struct Io<float> {
    static __device__ __forceinline__ float load(const float* x, u64 i) { return x[i]; }
    static __device__ __forceinline__ void store(float* x, u64 i, float f) { x[i] = f; }
    // i is a multiple of 4 and x is 16-byte aligned (checked by the host).
    static __device__ __forceinline__ void load4(const float* x, u64 i, float r[4]) {
        const float4 q = *reinterpret_cast<const float4*>(x + i);
        r[0] = q.x;
        r[1] = q.y;
        r[2] = q.z;
        r[3] = q.w;
    }
    static __device__ __forceinline__ void store4(float* x, u64 i, const float r[4]) {
        *reinterpret_cast<float4*>(x + i) = make_float4(r[0], r[1], r[2], r[3]);
    }
};

template <>
struct Io<u16> {
    static __device__ __forceinline__ float load(const u16* x, u64 i) { return bf16_to_f32(x[i]); }
    static __device__ __forceinline__ void store(u16* x, u64 i, float f) { x[i] = (u16)f32_to_bf16(f); }
    // i is a multiple of 4 and x is 8-byte aligned (checked by the host).
    static __device__ __forceinline__ void load4(const u16* x, u64 i, float r[4]) {
        const uint2 q = *reinterpret_cast<const uint2*>(x + i);
        r[0] = bf16_to_f32(q.x & 0xFFFFu);
        r[1] = bf16_to_f32(q.x >> 16);
        r[2] = bf16_to_f32(q.y & 0xFFFFu);
        r[3] = bf16_to_f32(q.y >> 16);
    }
    static __device__ __forceinline__ void store4(u16* x, u64 i, const float r[4]) {
        const u32 lo = f32_to_bf16(r[0]) | (f32_to_bf16(r[1]) << 16);
        const u32 hi = f32_to_bf16(r[2]) | (f32_to_bf16(r[3]) << 16);
        *reinterpret_cast<uint2*>(x + i) = make_uint2(lo, hi);
    }
};

// ---------------------------------------------------------------------------
// Dense moments: a grid-stride loop, four elements per thread and iteration
// with vector loads when every pointer allows it (vec != 0), then a scalar
// tail (or a scalar loop over everything when vec == 0).
template <typename P, typename G, typename S>
__device__ __forceinline__ void adamw_dense_body(P* __restrict__ p, const G* __restrict__ g, S* __restrict__ m,
                                                 S* __restrict__ v, u64 n, int vec, const AdamwConsts& c) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    const u64 tid = (u64)blockIdx.x * blockDim.x + threadIdx.x;
    u64 scalar_from = 0;
    if (vec) {
        const u64 groups = n / 4;
        for (u64 q = tid; q < groups; q += stride) {
            const u64 i = 4 * q;
            float pp[4], gg[4], mm[4], vv[4];
            Io<P>::load4(p, i, pp);
            Io<G>::load4(g, i, gg);
            Io<S>::load4(m, i, mm);
            Io<S>::load4(v, i, vv);
#pragma unroll
            for (int k = 0; k < 4; ++k) adamw_elem(pp[k], gg[k], mm[k], vv[k], c);
            Io<P>::store4(p, i, pp);
            Io<S>::store4(m, i, mm);
            Io<S>::store4(v, i, vv);
        }
        scalar_from = groups * 4;
    }
    for (u64 i = scalar_from + tid; i < n; i += stride) {
        float pp = Io<P>::load(p, i), mm = Io<S>::load(m, i), vv = Io<S>::load(v, i);
        adamw_elem(pp, Io<G>::load(g, i), mm, vv, c);
        Io<P>::store(p, i, pp);
        Io<S>::store(m, i, mm);
        Io<S>::store(v, i, vv);
    }
}

#define ADAMW_CONST_PARAMS                                                                                  \
    float gscale, float decay, float b1, float omb1, float b2, float omb2, float step_size, float sqrt_bc2,     \
        float eps
#define ADAMW_CONSTS {gscale, decay, b1, omb1, b2, omb2, step_size, sqrt_bc2, eps}

#define ADAMW_DENSE(NAME, P, G, S)                                                                          \
    extern "C" __global__ void __launch_bounds__(256)                                                       \
        NAME(P* p, const G* g, S* m, S* v, u64 n, int vec, ADAMW_CONST_PARAMS) {                            \
        const AdamwConsts c = ADAMW_CONSTS;                                                                 \
        adamw_dense_body<P, G, S>(p, g, m, v, n, vec, c);                                                   \
    }

// Names: adamw_dense_<param>_<grad>_<state>.
ADAMW_DENSE(adamw_dense_f32_f32_f32, float, float, float)
ADAMW_DENSE(adamw_dense_f32_f32_bf16, float, float, u16)
ADAMW_DENSE(adamw_dense_f32_bf16_f32, float, u16, float)
ADAMW_DENSE(adamw_dense_f32_bf16_bf16, float, u16, u16)
ADAMW_DENSE(adamw_dense_bf16_f32_f32, u16, float, float)
ADAMW_DENSE(adamw_dense_bf16_f32_bf16, u16, float, u16)
ADAMW_DENSE(adamw_dense_bf16_bf16_f32, u16, u16, float)
ADAMW_DENSE(adamw_dense_bf16_bf16_bf16, u16, u16, u16)

// ---------------------------------------------------------------------------
// 8-bit block moments: a CUDA block of 256 threads handles one quantization
// block at a time (grid-stride over blocks, so the maps are loaded into shared
// memory once per CUDA block), one element per thread.

// torch.bucketize(x, bounds, right=False) for the 255 sorted boundaries:
// the number of boundaries b with !(b >= x), i.e. the index i with
// bounds[i-1] < x <= bounds[i] (a tie goes to the lower code), and 255 for
// NaN, as torch's lower_bound. Eight branch-free steps; the largest index
// read is 254.
__device__ __forceinline__ u32 bucketize_255(const float* bounds, float x) {
    u32 pos = 0;
#pragma unroll
    for (u32 step = 128; step > 0; step >>= 1) {
        if (!(bounds[pos + step - 1] >= x)) pos += step;
    }
    return pos;
}

// torch's clamp(x, lo, 1): NaN stays NaN (fminf/fmaxf would drop it).
__device__ __forceinline__ float clamp_keep_nan(float x, float lo) { return x < lo ? lo : (x > 1.0f ? 1.0f : x); }

// Max over the 256 threads of non-negative floats (or NaN) through their
// bits: for values with a clear sign bit the unsigned order is the float
// order, and NaN's bits exceed +inf's, so a NaN wins as with torch's amax.
// `red` holds 8 words per reduction; the caller syncs before reusing it.
__device__ __forceinline__ void block_max2(float a, float b, u32* red, float& ma, float& mb) {
    const u32 wa = __reduce_max_sync(0xFFFFFFFFu, __float_as_uint(fabsf(a)));
    const u32 wb = __reduce_max_sync(0xFFFFFFFFu, __float_as_uint(fabsf(b)));
    const u32 warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        red[warp] = wa;
        red[8 + warp] = wb;
    }
    __syncthreads();
    u32 ra = 0, rb = 0;
#pragma unroll
    for (int k = 0; k < ADAMW_QBLOCK / 32; ++k) {
        ra = max(ra, red[k]);
        rb = max(rb, red[8 + k]);
    }
    ma = __uint_as_float(ra);
    mb = __uint_as_float(rb);
}

// QuantMap::quantize of one element: x / absmax (1 for an all-zero block, as
// where(absmax > 0, absmax, 1): NaN absmax also divides by 1), clamped to
// [lo, 1], bucketized.
__device__ __forceinline__ u8 quantize_elem(float x, float absmax, float lo, const float* bounds) {
    const float safe = absmax > 0.0f ? absmax : 1.0f;
    return (u8)bucketize_255(bounds, clamp_keep_nan(x / safe, lo));
}

template <typename P, typename G>
__device__ __forceinline__ void adamw_int8_body(P* __restrict__ p, const G* __restrict__ g, u8* __restrict__ m_codes,
                                                float* __restrict__ m_absmax, u8* __restrict__ v_codes,
                                                float* __restrict__ v_absmax, const float* m_values,
                                                const float* m_bounds, const float* v_values,
                                                const float* v_bounds, u64 n, u64 blocks, const AdamwConsts& c) {
    __shared__ float s_mval[256], s_vval[256], s_mb[256], s_vb[256];
    __shared__ u32 s_red[16];
    const u32 t = threadIdx.x;
    s_mval[t] = m_values[t];
    s_vval[t] = v_values[t];
    // Slot 255 is never read by bucketize_255; fill it anyway.
    s_mb[t] = t < 255 ? m_bounds[t] : 1.0f;
    s_vb[t] = t < 255 ? v_bounds[t] : 1.0f;
    __syncthreads();
    // The clamp floor of quantize: -1 for a signed map, 0 for an unsigned one.
    const float m_lo = s_mval[0] < 0.0f ? -1.0f : 0.0f;
    const float v_lo = s_vval[0] < 0.0f ? -1.0f : 0.0f;
    for (u64 b = blockIdx.x; b < blocks; b += gridDim.x) {
        const u64 i = b * ADAMW_QBLOCK + t;
        // Padding past n quantizes 0, as QuantMap::quantize pads with zeros.
        float m = 0.0f, v = 0.0f;
        if (i < n) {
            m = s_mval[m_codes[i]] * m_absmax[b];
            const float root = s_vval[v_codes[i]] * v_absmax[b];
            v = root * root;
            float pp = Io<P>::load(p, i);
            adamw_elem(pp, Io<G>::load(g, i), m, v, c);
            Io<P>::store(p, i, pp);
        }
        const float root = sqrtf(v);
        float am, av;
        // Every thread has read this block's absmax before the barrier inside.
        block_max2(m, root, s_red, am, av);
        if (t == 0) {
            m_absmax[b] = am;
            v_absmax[b] = av;
        }
        m_codes[i] = quantize_elem(m, am, m_lo, s_mb);
        v_codes[i] = quantize_elem(root, av, v_lo, s_vb);
        __syncthreads(); // s_red is rewritten by the next block
    }
}

#define ADAMW_INT8(NAME, P, G)                                                                              \
    extern "C" __global__ void __launch_bounds__(ADAMW_QBLOCK)                                              \
        NAME(P* p, const G* g, u8* m_codes, float* m_absmax, u8* v_codes, float* v_absmax,                  \
             const float* m_values, const float* m_bounds, const float* v_values, const float* v_bounds,    \
             u64 n, u64 blocks, ADAMW_CONST_PARAMS) {                                                       \
        const AdamwConsts c = ADAMW_CONSTS;                                                                 \
        adamw_int8_body<P, G>(p, g, m_codes, m_absmax, v_codes, v_absmax, m_values, m_bounds, v_values,     \
                              v_bounds, n, blocks, c);                                                      \
    }

// Names: adamw_int8_<param>_<grad>.
ADAMW_INT8(adamw_int8_f32_f32, float, float)
ADAMW_INT8(adamw_int8_f32_bf16, float, u16)
ADAMW_INT8(adamw_int8_bf16_f32, u16, float)
ADAMW_INT8(adamw_int8_bf16_bf16, u16, u16)

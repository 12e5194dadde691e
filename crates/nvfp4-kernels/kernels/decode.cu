// The small ops of a batch-1 decode step, fused so that a Qwen3 block is 10
// launches (4 of them W4A16 GEMVs, q/k/v and gate/up grouped) and the whole
// step can be recorded into one CUDA graph. bf16 values travel as u16 bits;
// all math is f32 and every rounding to bf16 happens where the libtorch
// reference path (crates/qwen3-model, attention.rs / norm.rs / mlp.rs) rounds.
//
// Graph replays keep kernel arguments fixed, so what changes per token comes
// from device memory: meta[0] = token id, meta[1] = its position (= cache
// length before it).

#define NEG_INF (-__int_as_float(0x7f800000))

// ---------------------------------------------------------------------------
// Embedding row of meta[0] (the host checks the id before writing meta).
extern "C" __global__ void dec_embed_row(const u16* table, const int* meta, u16* out, int hidden) {
    const u16* row = table + (long long)meta[0] * hidden;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < hidden; i += gridDim.x * blockDim.x)
        out[i] = row[i];
}

// ---------------------------------------------------------------------------
// RMSNorm of one row with the residual add folded in:
//   delta != 0:  resid = bf16(resid + delta)      (the block's `x + h`)
//   out = bf16((resid * rsqrt(mean(resid^2) + eps)) * w)
// One block of NORM_THREADS; n <= NORM_THREADS * NORM_PER_THREAD.
#define NORM_THREADS 512
#define NORM_PER_THREAD 16

extern "C" __global__ void __launch_bounds__(NORM_THREADS)
    dec_rmsnorm(u16* resid, const u16* delta, const float* w, u16* out, int n, float eps) {
    __shared__ float partial[NORM_THREADS / 32];
    float v[NORM_PER_THREAD];
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < NORM_PER_THREAD; ++j) {
        const int i = threadIdx.x + j * NORM_THREADS;
        float x = 0.0f;
        if (i < n) {
            x = bf16_to_f32(resid[i]);
            if (delta) {
                const u32 sum = f32_to_bf16(x + bf16_to_f32(delta[i]));
                resid[i] = (u16)sum;
                x = bf16_to_f32(sum);
            }
            ss += x * x;
        }
        v[j] = x;
    }
    ss = warp_sum(ss);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        float t = threadIdx.x < NORM_THREADS / 32 ? partial[threadIdx.x] : 0.0f;
        t = warp_sum(t);
        if (threadIdx.x == 0) partial[0] = t;
    }
    __syncthreads();
    const float r = rsqrtf(partial[0] / (float)n + eps);
#pragma unroll
    for (int j = 0; j < NORM_PER_THREAD; ++j) {
        const int i = threadIdx.x + j * NORM_THREADS;
        if (i < n) out[i] = (u16)f32_to_bf16((v[j] * r) * w[i]);
    }
}

// ---------------------------------------------------------------------------
// Per-head RMSNorm (q_norm / k_norm) then RoPE at position meta[1], in f32;
// q goes to q_out, k and v into the caches [kv_heads, cap, D] at that row.
// One warp per head (q heads first, then kv heads); lane l holds dims
// [l*EPL, (l+1)*EPL), so the RoPE partner d +- D/2 sits in lane l ^ 16.
template <int EPL>
__device__ __forceinline__ void norm_rope(const u16* src, const float* nw, const float* inv_freq,
                                          float pos, float eps, int lane, float (&x)[EPL]) {
    constexpr int D = 32 * EPL;
    load_bf16<EPL>(src + lane * EPL, x);
    float ss = 0.0f;
#pragma unroll
    for (int e = 0; e < EPL; ++e) ss += x[e] * x[e];
    const float r = rsqrtf(warp_sum(ss) / (float)D + eps);
#pragma unroll
    for (int e = 0; e < EPL; ++e) x[e] = (x[e] * r) * nw[lane * EPL + e];
#pragma unroll
    for (int e = 0; e < EPL; ++e) {
        const float partner = __shfl_xor_sync(FULL_MASK, x[e], 16);
        const int i = (lane * EPL + e) % (D / 2);
        const float f = pos * inv_freq[i];
        const float c = cosf(f), s = sinf(f);
        // lo = x1 cos - x2 sin ; hi = x2 cos + x1 sin  (as rope.rs)
        x[e] = lane < 16 ? x[e] * c - partner * s : x[e] * c + partner * s;
    }
}

template <int EPL>
__device__ __forceinline__ void qk_rope_append(const u16* q, const u16* k, const u16* v,
                                               const float* qw, const float* kw,
                                               const float* inv_freq, const int* meta, u16* q_out,
                                               u16* kc, u16* vc, int hq, int hkv, int cap,
                                               float eps) {
    constexpr int D = 32 * EPL;
    const int head = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int pos = meta[1];
    float x[EPL];
    if (head < hq) {
        norm_rope<EPL>(q + head * D, qw, inv_freq, (float)pos, eps, lane, x);
#pragma unroll
        for (int e = 0; e < EPL; ++e) q_out[head * D + lane * EPL + e] = (u16)f32_to_bf16(x[e]);
    } else if (head < hq + hkv) {
        const int h = head - hq;
        norm_rope<EPL>(k + h * D, kw, inv_freq, (float)pos, eps, lane, x);
        const long long row = ((long long)h * cap + pos) * D + lane * EPL;
#pragma unroll
        for (int e = 0; e < EPL; ++e) {
            kc[row + e] = (u16)f32_to_bf16(x[e]);
            vc[row + e] = v[h * D + lane * EPL + e];
        }
    }
}

#define QK_ROPE(EPL)                                                                             \
    extern "C" __global__ void dec_qk_rope_append_e##EPL(                                        \
        const u16* q, const u16* k, const u16* v, const float* qw, const float* kw,              \
        const float* inv_freq, const int* meta, u16* q_out, u16* kc, u16* vc, int hq, int hkv,   \
        int cap, float eps) {                                                                    \
        qk_rope_append<EPL>(q, k, v, qw, kw, inv_freq, meta, q_out, kc, vc, hq, hkv, cap, eps);  \
    }
QK_ROPE(1)
QK_ROPE(2)
QK_ROPE(4)
QK_ROPE(8)

// ---------------------------------------------------------------------------
// Attention of one query token over the cache rows 0..meta[1] (inclusive),
// split along the keys (flash-decoding). Grid (kv_heads, splits); one warp per
// query head of the kv head's group (grouped-query attention: q head h reads
// kv head h / group, as repeat_kv). Each warp writes its split's unnormalised
// output and (running max, sum of exponentials) for dec_attn_combine.
#define ATTN_UNROLL 4

template <int EPL>
__device__ __forceinline__ void attn_split(const u16* q, const u16* kc, const u16* vc,
                                           const int* meta, float* part_o, float* part_ml,
                                           int group, int cap, int splits, float scale) {
    constexpr int D = 32 * EPL;
    const int kvh = blockIdx.x, s = blockIdx.y;
    const int lane = threadIdx.x % 32;
    const int h = kvh * group + threadIdx.x / 32;
    const int len = meta[1] + 1;
    const int chunk = (len + splits - 1) / splits;
    const int j0 = min(len, s * chunk), j1 = min(len, j0 + chunk);
    const u16* kb = kc + (long long)kvh * cap * D + lane * EPL;
    const u16* vb = vc + (long long)kvh * cap * D + lane * EPL;
    float qv[EPL], acc[EPL];
    load_bf16<EPL>(q + h * D + lane * EPL, qv);
#pragma unroll
    for (int e = 0; e < EPL; ++e) acc[e] = 0.0f;
    float m = NEG_INF, l = 0.0f;
    int j = j0;
    for (; j + ATTN_UNROLL <= j1; j += ATTN_UNROLL) {
        float dot[ATTN_UNROLL];
#pragma unroll
        for (int u = 0; u < ATTN_UNROLL; ++u) {
            float kv[EPL];
            load_bf16<EPL>(kb + (long long)(j + u) * D, kv);
            dot[u] = 0.0f;
#pragma unroll
            for (int e = 0; e < EPL; ++e) dot[u] += qv[e] * kv[e];
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
#pragma unroll
            for (int u = 0; u < ATTN_UNROLL; ++u) dot[u] += __shfl_xor_sync(FULL_MASK, dot[u], o);
        float mx = m;
#pragma unroll
        for (int u = 0; u < ATTN_UNROLL; ++u) {
            dot[u] *= scale;
            mx = fmaxf(mx, dot[u]);
        }
        const float corr = expf(m - mx);
        l *= corr;
#pragma unroll
        for (int e = 0; e < EPL; ++e) acc[e] *= corr;
#pragma unroll
        for (int u = 0; u < ATTN_UNROLL; ++u) {
            const float p = expf(dot[u] - mx);
            float vv[EPL];
            load_bf16<EPL>(vb + (long long)(j + u) * D, vv);
            l += p;
#pragma unroll
            for (int e = 0; e < EPL; ++e) acc[e] += p * vv[e];
        }
        m = mx;
    }
    for (; j < j1; ++j) {
        float kv[EPL], vv[EPL];
        load_bf16<EPL>(kb + (long long)j * D, kv);
        float dot = 0.0f;
#pragma unroll
        for (int e = 0; e < EPL; ++e) dot += qv[e] * kv[e];
        dot = warp_sum(dot) * scale;
        const float mx = fmaxf(m, dot);
        const float corr = expf(m - mx), p = expf(dot - mx);
        load_bf16<EPL>(vb + (long long)j * D, vv);
        l = l * corr + p;
#pragma unroll
        for (int e = 0; e < EPL; ++e) acc[e] = acc[e] * corr + p * vv[e];
        m = mx;
    }
    const long long slot = (long long)h * splits + s;
#pragma unroll
    for (int e = 0; e < EPL; ++e) part_o[slot * D + lane * EPL + e] = acc[e];
    if (lane == 0) {
        part_ml[slot * 2] = m;
        part_ml[slot * 2 + 1] = l;
    }
}

#define ATTN_SPLIT(EPL)                                                                          \
    extern "C" __global__ void dec_attn_split_e##EPL(const u16* q, const u16* kc, const u16* vc, \
                                                     const int* meta, float* part_o,             \
                                                     float* part_ml, int group, int cap,         \
                                                     int splits, float scale) {                  \
        attn_split<EPL>(q, kc, vc, meta, part_o, part_ml, group, cap, splits, scale);           \
    }
ATTN_SPLIT(1)
ATTN_SPLIT(2)
ATTN_SPLIT(4)
ATTN_SPLIT(8)

// Merges the splits of each query head (grid = heads): rescales every split
// to the global max; empty splits (max -inf, sum 0) contribute nothing.
extern "C" __global__ void dec_attn_combine(const float* part_o, const float* part_ml, u16* out,
                                            int splits, int d) {
    const int h = blockIdx.x;
    const float* ml = part_ml + (long long)h * splits * 2;
    float mx = NEG_INF;
    for (int s = 0; s < splits; ++s) mx = fmaxf(mx, ml[2 * s]);
    float den = 0.0f;
    for (int s = 0; s < splits; ++s) den += expf(ml[2 * s] - mx) * ml[2 * s + 1];
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float num = 0.0f;
        for (int s = 0; s < splits; ++s)
            num += expf(ml[2 * s] - mx) * part_o[((long long)h * splits + s) * d + i];
        out[h * d + i] = (u16)f32_to_bf16(num / den);
    }
}

// ---------------------------------------------------------------------------
// out = bf16(bf16(silu(gate)) * up), the MLP's `gate.silu() * up` in bf16.
extern "C" __global__ void dec_silu_mul(const u16* gate, const u16* up, u16* out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        out[i] = (u16)f32_to_bf16(silu_bf16(bf16_to_f32(gate[i])) * bf16_to_f32(up[i]));
    }
}

// Fused forward / backward ops of one Qwen3 decoder block for training: RMSNorm,
// SwiGLU, and the per-head q/k RMSNorm + RoPE (host side: src/cuda/train.rs; the
// tch-op references they are tested against: src/train_ops.rs). bf16 values
// travel as u16 bits, all math is f32 with the reference's operation order
// (--fmad=false keeps every product and sum rounded as torch's separate ops
// round them), and every rounding to bf16 happens where the reference rounds.
// Only the reductions (mean squares, row dots, weight gradients) add in
// another order.
//
// V (1 or 8) is how many consecutive elements a thread moves at once: 8 (one
// 16-byte access) when every row start is 16-byte aligned, else 1.
//
// Determinism: every reduction has a fixed order given the launch shape, and
// the host derives launch shapes from the tensor shapes alone (not from the
// GPU). Weight gradients are per-CTA partial rows reduced by tr_colsum, never
// float atomics.

#define TRAIN_THREADS 256

// Sum over the CTA, returned to every thread, in the same order every call.
// `red` holds one value per warp.
__device__ __forceinline__ float block_sum(float v, float* red) {
    v = warp_sum(v);
    __syncthreads();  // every warp has read `red` of the previous call
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    const int lane = threadIdx.x % 32;
    return warp_sum(lane < (int)(blockDim.x / 32) ? red[lane] : 0.0f);
}

// ---------------------------------------------------------------------------
// RMSNorm forward, one CTA per row of h (contiguous rows):
//   rstd = 1 / sqrt(mean(x^2) + eps);  y = bf16((x * rstd) * w)
// The second pass re-reads the row (from L1/L2) instead of holding it.
template <int V>
__device__ __forceinline__ void rmsnorm_fwd(const u16* x, const float* w, u16* y, float* rstd,
                                            int h, float eps) {
    __shared__ float red[32];
    const long long off = (long long)blockIdx.x * h;
    float ss = 0.0f;
    for (int c = threadIdx.x * V; c < h; c += blockDim.x * V) {
        float v[V];
        load_bf16<V>(x + off + c, v);
#pragma unroll
        for (int e = 0; e < V; ++e) ss += v[e] * v[e];
    }
    const float r = rsqrtf(block_sum(ss, red) / (float)h + eps);
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
    for (int c = threadIdx.x * V; c < h; c += blockDim.x * V) {
        float v[V];
        load_bf16<V>(x + off + c, v);
#pragma unroll
        for (int e = 0; e < V; ++e) v[e] = (v[e] * r) * w[c + e];
        store_bf16<V>(y + off + c, v);
    }
}

// RMSNorm backward over rows [blockIdx.x * rows_per_cta, +rows_per_cta):
//   xh = x * rstd;  g = dy * w;  dx = bf16((g - xh * mean(g * xh)) * rstd [+ res])
// and this CTA's partial dw (sum of dy * xh over its rows) into dw_part[blockIdx.x].
// Each thread owns the same columns in every row, so its dw_acc entries need
// no synchronisation.
template <int V>
__device__ __forceinline__ void rmsnorm_bwd(const u16* dy, const u16* x, const float* w,
                                            const float* rstd, const u16* res, u16* dx,
                                            float* dw_part, int n, int h, int rows_per_cta) {
    extern __shared__ float dw_acc[];  // [h]
    __shared__ float red[32];
    for (int c = threadIdx.x * V; c < h; c += blockDim.x * V)
#pragma unroll
        for (int e = 0; e < V; ++e) dw_acc[c + e] = 0.0f;
    const int r0 = (int)blockIdx.x * rows_per_cta, r1 = min(n, r0 + rows_per_cta);
    for (int row = r0; row < r1; ++row) {
        const long long off = (long long)row * h;
        const float r = rstd[row];
        float dot = 0.0f;
        for (int c = threadIdx.x * V; c < h; c += blockDim.x * V) {
            float d[V], xv[V];
            load_bf16<V>(dy + off + c, d);
            load_bf16<V>(x + off + c, xv);
#pragma unroll
            for (int e = 0; e < V; ++e) dot += (d[e] * w[c + e]) * (xv[e] * r);
        }
        const float m = block_sum(dot, red) / (float)h;
        for (int c = threadIdx.x * V; c < h; c += blockDim.x * V) {
            float d[V], xv[V], o[V];
            load_bf16<V>(dy + off + c, d);
            load_bf16<V>(x + off + c, xv);
            if (res) load_bf16<V>(res + off + c, o);
#pragma unroll
            for (int e = 0; e < V; ++e) {
                const float xh = xv[e] * r, g = d[e] * w[c + e];
                const float v = (g - xh * m) * r;
                // No `+ 0.0f` without a residual: it would turn -0 into +0.
                o[e] = res ? v + o[e] : v;
                dw_acc[c + e] += d[e] * xh;
            }
            store_bf16<V>(dx + off + c, o);
        }
    }
    for (int c = threadIdx.x * V; c < h; c += blockDim.x * V)
#pragma unroll
        for (int e = 0; e < V; ++e) dw_part[(long long)blockIdx.x * h + c + e] = dw_acc[c + e];
}

// out[c] = sum of part[r][c] over r = 0, 1, ..., rows - 1, in that order.
extern "C" __global__ void tr_colsum(const float* part, float* out, int rows, int cols) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float s = 0.0f;
    for (int r = 0; r < rows; ++r) s += part[(long long)r * cols + c];
    out[c] = s;
}

// ---------------------------------------------------------------------------
// SwiGLU on rows of `cols` at row strides (gate and up may be the column
// halves of one [N, 2I] buffer), grid-stride over groups of V.
//   forward:  h = bf16(bf16(silu(g)) * u)                       (torch: gate.silu() * up)
//   backward: dup = bf16(dh * bf16(silu(g)));  ds = bf16(dh * u);
//             dgate = bf16((ds * sig(g)) * (1 + g * (1 - sig(g))))   (torch's silu_backward)
// with dgate and dup written to columns [0, cols) and [cols, 2 cols) of out's rows;
// when h is not null the backward also writes the forward's h (a backward that
// recomputes h, e.g. for the down projection's weight gradient, reads gate and
// up once instead of twice).

// f(row, c) for every group of V columns [c, c + V) of every row, grid-stride.
template <int V, typename F>
__device__ __forceinline__ void for_each_group(int rows, int cols, F f) {
    const int per_row = cols / V;
    const long long groups = (long long)rows * per_row;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < groups;
         i += (long long)gridDim.x * blockDim.x)
        f(i / per_row, (int)(i % per_row) * V);
}

template <int V>
__device__ __forceinline__ void swiglu_fwd(const u16* gate, long long gs, const u16* up,
                                           long long us, u16* h, long long hs, int rows,
                                           int cols) {
    for_each_group<V>(rows, cols, [&](long long row, int c) {
        float g[V], u[V];
        load_bf16<V>(gate + row * gs + c, g);
        load_bf16<V>(up + row * us + c, u);
#pragma unroll
        for (int e = 0; e < V; ++e) g[e] = silu_bf16(g[e]) * u[e];
        store_bf16<V>(h + row * hs + c, g);
    });
}

template <int V>
__device__ __forceinline__ void swiglu_bwd(const u16* dh, long long ds, const u16* gate,
                                           long long gs, const u16* up, long long us, u16* out,
                                           long long os, u16* h, long long hs, int rows,
                                           int cols) {
    for_each_group<V>(rows, cols, [&](long long row, int c) {
        float d[V], g[V], u[V];
        load_bf16<V>(dh + row * ds + c, d);
        load_bf16<V>(gate + row * gs + c, g);
        load_bf16<V>(up + row * us + c, u);
        if (h != nullptr) {
            float hv[V];
#pragma unroll
            for (int e = 0; e < V; ++e) hv[e] = silu_bf16(g[e]) * u[e];
            store_bf16<V>(h + row * hs + c, hv);
        }
#pragma unroll
        for (int e = 0; e < V; ++e) {
            const float dsu = bf16_to_f32(f32_to_bf16(d[e] * u[e]));
            const float sig = 1.0f / (1.0f + expf(-g[e]));
            u[e] = d[e] * silu_bf16(g[e]);  // dup, rounded by the store
            g[e] = (dsu * sig) * (1.0f + g[e] * (1.0f - sig));
        }
        store_bf16<V>(out + row * os + c, g);
        store_bf16<V>(out + row * os + cols + c, u);
    });
}

#define ROW_KERNELS(V)                                                                           \
    extern "C" __global__ void __launch_bounds__(TRAIN_THREADS) tr_rmsnorm_fwd_v##V(              \
        const u16* x, const float* w, u16* y, float* rstd, int h, float eps) {                    \
        rmsnorm_fwd<V>(x, w, y, rstd, h, eps);                                                   \
    }                                                                                            \
    extern "C" __global__ void __launch_bounds__(TRAIN_THREADS) tr_rmsnorm_bwd_v##V(              \
        const u16* dy, const u16* x, const float* w, const float* rstd, const u16* res, u16* dx, \
        float* dw_part, int n, int h, int rows_per_cta) {                                         \
        rmsnorm_bwd<V>(dy, x, w, rstd, res, dx, dw_part, n, h, rows_per_cta);                    \
    }                                                                                            \
    extern "C" __global__ void tr_swiglu_fwd_v##V(const u16* gate, long long gs, const u16* up, \
                                                  long long us, u16* h, long long hs, int rows,  \
                                                  int cols) {                                    \
        swiglu_fwd<V>(gate, gs, up, us, h, hs, rows, cols);                                      \
    }                                                                                            \
    extern "C" __global__ void tr_swiglu_bwd_v##V(                                               \
        const u16* dh, long long ds, const u16* gate, long long gs, const u16* up, long long us, \
        u16* out, long long os, u16* h, long long hs, int rows, int cols) {                      \
        swiglu_bwd<V>(dh, ds, gate, gs, up, us, out, os, h, hs, rows, cols);                     \
    }
ROW_KERNELS(1)
ROW_KERNELS(8)

// ---------------------------------------------------------------------------
// Per-head RMSNorm + RoPE of q or k: one warp per item (row, head), items in
// row-major order; row n is at position n % t_len of cos/sin [t_len, half].
// Lane l holds the RoPE pairs (i, i + half) for i = l, l + 32, ... < half, so
// any even D = 2 * half <= 256 works.
#define QK_MAXP 4   // pairs a lane holds: half <= 32 * QK_MAXP
#define QK_WARPS 8  // warps per CTA

struct QkPairs {
    float lo[QK_MAXP], hi[QK_MAXP];
};

__device__ __forceinline__ void load_pairs(const u16* p, int half, QkPairs& v) {
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int k = 0; k < QK_MAXP; ++k) {
        const int i = lane + 32 * k;
        v.lo[k] = i < half ? bf16_to_f32(p[i]) : 0.0f;
        v.hi[k] = i < half ? bf16_to_f32(p[i + half]) : 0.0f;
    }
}

// 1 / sqrt(mean(x^2) + eps) of the warp's item (the same bits in forward and backward).
__device__ __forceinline__ float pairs_rstd(const QkPairs& x, int half, float eps) {
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < QK_MAXP; ++k) ss += x.lo[k] * x.lo[k] + x.hi[k] * x.hi[k];
    return rsqrtf(warp_sum(ss) / (float)(2 * half) + eps);
}

// Rotate-half RoPE as rope.rs: lo = a cos - b sin; hi = b cos + a sin. With -sin
// it is the inverse (the transpose), bit for bit the same as writing out
// a cos + b sin, since x - (-y) == x + y exactly.
__device__ __forceinline__ void rotate(float a, float b, float c, float s, float& lo, float& hi) {
    lo = a * c - b * s;
    hi = b * c + a * s;
}

// out (contiguous [items, D]) = bf16(rope((x * rstd) * w)).
extern "C" __global__ void __launch_bounds__(QK_WARPS * 32)
    tr_qk_norm_rope_fwd(const u16* x, long long xs, const float* w, const float* cos_t,
                        const float* sin_t, u16* out, int items, int heads, int half, int t_len,
                        float eps) {
    const int item = (int)blockIdx.x * QK_WARPS + (int)threadIdx.x / 32;
    if (item >= items) return;  // a whole warp: item is the same on every lane
    const int row = item / heads, head = item % heads, lane = threadIdx.x % 32;
    QkPairs v;
    load_pairs(x + (long long)row * xs + (long long)head * 2 * half, half, v);
    const float r = pairs_rstd(v, half, eps);
    const float* c = cos_t + (long long)(row % t_len) * half;
    const float* s = sin_t + (long long)(row % t_len) * half;
    u16* o = out + (long long)item * 2 * half;
#pragma unroll
    for (int k = 0; k < QK_MAXP; ++k) {
        const int i = lane + 32 * k;
        if (i >= half) break;
        float lo, hi;
        rotate((v.lo[k] * r) * w[i], (v.hi[k] * r) * w[i + half], c[i], s[i], lo, hi);
        o[i] = (u16)f32_to_bf16(lo);
        o[i + half] = (u16)f32_to_bf16(hi);
    }
}

// Backward of the above for items [blockIdx.x * items_per_cta, +items_per_cta):
//   dn = rope^-1(dout);  xh = x * rstd;  g = dn * w;
//   dx = bf16((g - xh * mean(g * xh)) * rstd)   (into dx's rows, stride dxs)
// and this CTA's partial dw (sum of dn * xh) into dw_part[blockIdx.x]. Each
// lane accumulates its own dims over its warp's items; warps are then added
// in order.
extern "C" __global__ void __launch_bounds__(QK_WARPS * 32)
    tr_qk_norm_rope_bwd(const u16* dout, const u16* x, long long xs, const float* w,
                        const float* cos_t, const float* sin_t, u16* dx, long long dxs,
                        float* dw_part, int items, int heads, int half, int t_len, float eps,
                        int items_per_cta) {
    __shared__ float acc[QK_WARPS][64 * QK_MAXP];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    QkPairs a = {};
    const int first = (int)blockIdx.x * items_per_cta, last = min(items, first + items_per_cta);
    for (int item = first + warp; item < last; item += QK_WARPS) {
        const int row = item / heads;
        const long long col = (long long)(item % heads) * 2 * half;
        QkPairs xh, g;
        load_pairs(x + (long long)row * xs + col, half, xh);
        load_pairs(dout + (long long)item * 2 * half, half, g);
        const float r = pairs_rstd(xh, half, eps);
        const float* c = cos_t + (long long)(row % t_len) * half;
        const float* s = sin_t + (long long)(row % t_len) * half;
        float dot = 0.0f;
#pragma unroll
        for (int k = 0; k < QK_MAXP; ++k) {
            const int i = lane + 32 * k;
            if (i >= half) break;
            float dn1, dn2;
            rotate(g.lo[k], g.hi[k], c[i], -s[i], dn1, dn2);
            xh.lo[k] *= r;
            xh.hi[k] *= r;
            a.lo[k] += dn1 * xh.lo[k];
            a.hi[k] += dn2 * xh.hi[k];
            g.lo[k] = dn1 * w[i];
            g.hi[k] = dn2 * w[i + half];
            dot += g.lo[k] * xh.lo[k] + g.hi[k] * xh.hi[k];
        }
        const float m = warp_sum(dot) / (float)(2 * half);
        u16* o = dx + (long long)row * dxs + col;
#pragma unroll
        for (int k = 0; k < QK_MAXP; ++k) {
            const int i = lane + 32 * k;
            if (i >= half) break;
            o[i] = (u16)f32_to_bf16((g.lo[k] - xh.lo[k] * m) * r);
            o[i + half] = (u16)f32_to_bf16((g.hi[k] - xh.hi[k] * m) * r);
        }
    }
#pragma unroll
    for (int k = 0; k < QK_MAXP; ++k) {
        const int i = lane + 32 * k;
        if (i < half) {
            acc[warp][i] = a.lo[k];
            acc[warp][i + half] = a.hi[k];
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < 2 * half; i += blockDim.x) {
        float sum = 0.0f;
        for (int wi = 0; wi < QK_WARPS; ++wi) sum += acc[wi][i];
        dw_part[(long long)blockIdx.x * 2 * half + i] = sum;
    }
}

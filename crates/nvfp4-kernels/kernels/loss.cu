// Fused cross-entropy forward + backward over bf16 logits (Liger-style): the
// loss of each row and, in place of the logits, the gradient of
// `scale * sum of the losses`, so no f32 copy of the logits, of their
// log-softmax or of the gradient is ever materialised.
//
// One CTA per row, two passes over it: pass 1 keeps an online max and sum of
// exp(x - max) per thread, merged across the CTA; pass 2 writes
// grad = scale * (softmax - one_hot), rounded once to bf16. The f32 formulas
// are those of the tch reference (src/loss.rs) and of torch's log_softmax:
// log_softmax = (x - max) - log(sum), p = exp(log_softmax),
// loss = -log_softmax[target]; only the order of the sum differs.
//
// Rows are cut into a head (up to the first 16-byte boundary), 16-byte
// vectors of 8 bf16, and a tail, so any vocabulary size and row start works.

#define CE_THREADS 512
#define CE_UNROLL 2 // 16-byte loads in flight per thread before their math (4: > 64 registers)
#define CE_NEG_INF __int_as_float(0xff800000u)

// Running max and sum of exp(x - m) of the values seen so far.
struct Lse {
    float m, s;
};

// Adds N values. -inf values add exp(-inf) = 0; a group of nothing else is
// skipped so that an empty running state never computes -inf - -inf (NaN).
template <int N>
__device__ __forceinline__ void lse_add(Lse& a, const float* x) {
    float cm = x[0];
#pragma unroll
    for (int i = 1; i < N; ++i) cm = fmaxf(cm, x[i]);
    if (cm == CE_NEG_INF) return;
    if (cm > a.m) {
        a.s *= expf(a.m - cm);
        a.m = cm;
    }
#pragma unroll
    for (int i = 0; i < N; ++i) a.s += expf(x[i] - a.m);
}

__device__ __forceinline__ Lse lse_merge(Lse a, Lse b) {
    const float m = fmaxf(a.m, b.m);
    if (m == CE_NEG_INF) return a; // both empty
    return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

// The CTA's (max, sum) in every thread: a shuffle tree per warp, then every
// thread merges the warps' results in the same order (same bits everywhere,
// no broadcast needed). Contains the CTA's one barrier.
__device__ __forceinline__ Lse lse_block(Lse a) {
    __shared__ Lse warp_part[32];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        a = lse_merge(a, {__shfl_xor_sync(FULL_MASK, a.m, o), __shfl_xor_sync(FULL_MASK, a.s, o)});
    if (threadIdx.x % 32 == 0) warp_part[threadIdx.x / 32] = a;
    __syncthreads();
    a = warp_part[0];
    for (int w = 1; w < (int)blockDim.x / 32; ++w) a = lse_merge(a, warp_part[w]);
    return a;
}

// Where a row's 16-byte vectors start and how many there are; the `edge`
// elements outside them (head then tail, fewer than 8 each) go one a thread.
struct RowSplit {
    int head, nvec, edge;
};

__device__ __forceinline__ RowSplit row_split(const u16* row, int v) {
    const int to_boundary = (int)((16u - ((u32)(u64)row & 15u)) & 15u) / 2;
    const int head = min(v, to_boundary);
    const int nvec = (v - head) / 8;
    return {head, nvec, v - 8 * nvec};
}

__device__ __forceinline__ int edge_index(const RowSplit& sp, int j) {
    return j < sp.head ? j : j + 8 * sp.nvec;
}

// One gradient element: scale * (p - [j == target]) in f32, as the reference
// `(exp(log_softmax) - one_hot) * scale`.
__device__ __forceinline__ float ce_grad(float x, bool is_target, float m, float logs, float scale) {
    const float p = expf((x - m) - logs);
    return (is_target ? p - 1.0f : p) * scale;
}

__device__ __forceinline__ Lse row_lse(const u16* row, const RowSplit& sp) {
    Lse a = {CE_NEG_INF, 0.0f};
    for (int j = threadIdx.x; j < sp.edge; j += blockDim.x) {
        const float x = bf16_to_f32(row[edge_index(sp, j)]);
        lse_add<1>(a, &x);
    }
    const u16* body = row + sp.head;
    const int step = CE_UNROLL * blockDim.x;
    for (int k0 = threadIdx.x; k0 < sp.nvec; k0 += step) {
        float x[CE_UNROLL][8];
#pragma unroll
        for (int u = 0; u < CE_UNROLL; ++u) {
            const int k = k0 + u * blockDim.x;
            if (k < sp.nvec) {
                load_bf16<8>(body + 8 * k, x[u]);
            } else {
#pragma unroll
                for (int e = 0; e < 8; ++e) x[u][e] = CE_NEG_INF;
            }
        }
        lse_add<CE_UNROLL * 8>(a, &x[0][0]);
    }
    return lse_block(a);
}

// Pass 2 walks the vectors from the row's end: pass 1 read that part last,
// so it is the part most likely still in L2.
__device__ __forceinline__ void row_grad(u16* row, const RowSplit& sp, int t, float m, float logs,
                                         float scale) {
    for (int j = threadIdx.x; j < sp.edge; j += blockDim.x) {
        const int i = edge_index(sp, j);
        row[i] = (u16)f32_to_bf16(ce_grad(bf16_to_f32(row[i]), i == t, m, logs, scale));
    }
    u16* body = row + sp.head;
    const int step = CE_UNROLL * blockDim.x;
    for (int k0 = threadIdx.x; k0 < sp.nvec; k0 += step) {
        float x[CE_UNROLL][8];
#pragma unroll
        for (int u = 0; u < CE_UNROLL; ++u) {
            const int k = sp.nvec - 1 - (k0 + u * blockDim.x);
            if (k >= 0) load_bf16<8>(body + 8 * k, x[u]);
        }
#pragma unroll
        for (int u = 0; u < CE_UNROLL; ++u) {
            const int k = sp.nvec - 1 - (k0 + u * blockDim.x);
            if (k < 0) continue;
            const int j0 = sp.head + 8 * k;
#pragma unroll
            for (int e = 0; e < 8; ++e) x[u][e] = ce_grad(x[u][e], j0 + e == t, m, logs, scale);
            store_bf16<8>(body + 8 * k, x[u]);
        }
    }
}

// Grid = rows, block = CE_THREADS; two CTAs per SM in the launch bounds (at
// most 64 registers), which keeps 32 KB of loads in flight per SM and leaves
// ptxas room not to spill (without it, it picks 40 and spills on sm_80).
// logits [rows, v] bf16 (overwritten by the gradient), targets [rows] int64
// in 0..v (checked by the host), losses [rows] f32 (-log_softmax[target]).
extern "C" __global__ void __launch_bounds__(CE_THREADS, 2)
    ce_fused_bf16(u16* logits, const long long* targets, float* losses, int v, float scale) {
    u16* row = logits + (long long)blockIdx.x * v;
    const int t = (int)targets[blockIdx.x];
    // Read before the barrier in row_lse: pass 2 overwrites it.
    const float xt = threadIdx.x == 0 ? bf16_to_f32(row[t]) : 0.0f;
    const RowSplit sp = row_split(row, v);
    const Lse a = row_lse(row, sp);
    const float logs = logf(a.s);
    row_grad(row, sp, t, a.m, logs, scale);
    if (threadIdx.x == 0) losses[blockIdx.x] = logs - (xt - a.m);
}

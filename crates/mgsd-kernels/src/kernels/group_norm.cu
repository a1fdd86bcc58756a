// GroupNorm (optionally followed by ReLU) for (N, C, S) f32 tensors, S = D·H·W, forward and
// backward: the CUDA twin of mgsd-nn's CPU GroupNorm op (same numerics as torch.nn.GroupNorm:
// biased variance, eps inside the root, per-channel affine γ, β).
//
// A group's Cg = C/G channels are adjacent, so group `ng = n·G + g` is the contiguous range
// [ng·M, (ng+1)·M), M = Cg·S. Statistics are reduced by many blocks per group (a group can
// hold millions of voxels while N·G is often below the SM count), each block adding its
// partial sums into f64 accumulators with atomicAdd. Sums are shifted by the group's first
// element so that the variance does not cancel.
//
// forward   mgsd_gn_stats       acc[ng] += (Σ(x−p), Σ(x−p)²)           grid (chunks, N·G)
//           mgsd_gn_finalize    mean, rstd per group                    N·G threads
//           mgsd_gn_apply       y = x·a + b (ReLU: max(·, 0)),          grid-stride
//                               a = rstd·γ_c, b = β_c − mean·a
// backward  mgsd_gn_bwd_reduce  acc[nc] += (Σ dy', Σ dy'·x), dy' = dy masked by the ReLU
//                               (recomputed from x)                     grid (chunks, N·C)
//           mgsd_gn_bwd_coef    per (n,c): k1 = rstd·γ_c, dγ_nc, dβ_nc;  N·G threads
//                               per (n,g): k2, k3 with dx = k1·dy' + k2·x + k3
//           mgsd_gn_bwd_apply   dx                                      grid-stride
//
// Launch geometry: src/candle_ops/group_norm.rs (THREADS must match). Workspaces: acc f64, zeroed before the reduces.

namespace {

constexpr int THREADS = 256;

// Block-wide sum of two doubles; the result is valid in thread 0.
__device__ __forceinline__ void block_sum2(double& a, double& b) {
    __shared__ double sa[THREADS / 32], sb[THREADS / 32];
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_down_sync(0xffffffffu, a, o);
        b += __shfl_down_sync(0xffffffffu, b, o);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        sa[warp] = a;
        sb[warp] = b;
    }
    __syncthreads();
    if (warp == 0) {
        a = lane < THREADS / 32 ? sa[lane] : 0.0;
        b = lane < THREADS / 32 ? sb[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) {
            a += __shfl_down_sync(0xffffffffu, a, o);
            b += __shfl_down_sync(0xffffffffu, b, o);
        }
    }
}

}  // namespace

// acc[2·ng], acc[2·ng+1] += Σ (x − p), Σ (x − p)² over this block's chunk of group ng,
// p = x[ng·M] (the group's first element). Chunk = `per_block` elements.
extern "C" __global__ void __launch_bounds__(THREADS)
    mgsd_gn_stats(const float* x, double* acc, long long m, long long per_block) {
    const long long ng = blockIdx.y;
    const float* g = x + ng * m;
    const float p = g[0];
    const long long start = (long long)blockIdx.x * per_block;
    const long long end = min(start + per_block, m);
    float s1 = 0.f, s2 = 0.f;
    for (long long i = start + threadIdx.x; i < end; i += THREADS) {
        const float v = g[i] - p;
        s1 += v;
        s2 += v * v;
    }
    double a = s1, b = s2;
    block_sum2(a, b);
    if (threadIdx.x == 0) {
        atomicAdd(&acc[2 * ng], a);
        atomicAdd(&acc[2 * ng + 1], b);
    }
}

// stats[2·ng] = mean, stats[2·ng+1] = rstd of every group, from the shifted sums.
extern "C" __global__ void mgsd_gn_finalize(const float* x, const double* acc, float* stats,
                                            int groups, long long m, float eps) {
    const int ng = blockIdx.x * blockDim.x + threadIdx.x;
    if (ng >= groups) return;
    const double p = x[(long long)ng * m];
    const double d1 = acc[2 * ng] / (double)m;
    const double var = fmax(acc[2 * ng + 1] / (double)m - d1 * d1, 0.0);
    stats[2 * ng] = (float)(p + d1);
    stats[2 * ng + 1] = (float)(1.0 / sqrt(var + (double)eps));
}

// y = x·a_c + b_c, then ReLU when `relu`; channel c = (i / s) mod C, group = (i / s) / cg.
extern "C" __global__ void __launch_bounds__(THREADS)
    mgsd_gn_apply(const float* x, const float* stats, const float* gamma, const float* beta,
                  float* y, long long total, long long s, int c, int cg, int relu) {
    for (long long i = (long long)blockIdx.x * THREADS + threadIdx.x; i < total;
         i += (long long)gridDim.x * THREADS) {
        const long long nc = i / s;
        const int ch = (int)(nc % c);
        const long long ng = nc / cg;
        const float a = stats[2 * ng + 1] * gamma[ch];
        const float b = beta[ch] - stats[2 * ng] * a;
        float v = fmaf(x[i], a, b);
        if (relu) v = fmaxf(v, 0.f);
        y[i] = v;
    }
}

// acc[2·nc], acc[2·nc+1] += Σ dy', Σ dy'·(x − mean) over this block's chunk of channel plane
// nc (S elements); dy' = dy where the (recomputed) pre-activation is > 0 when `relu`.
extern "C" __global__ void __launch_bounds__(THREADS)
    mgsd_gn_bwd_reduce(const float* x, const float* dy, const float* stats, const float* gamma,
                       const float* beta, double* acc, long long s, int c, int cg, int relu,
                       long long per_block) {
    const long long nc = blockIdx.y;
    const int ch = (int)(nc % c);
    const long long ng = nc / cg;
    const float mean = stats[2 * ng];
    const float a = stats[2 * ng + 1] * gamma[ch];
    const float b = beta[ch] - mean * a;
    const float* xp = x + nc * s;
    const float* dp = dy + nc * s;
    const long long start = (long long)blockIdx.x * per_block;
    const long long end = min(start + per_block, s);
    float s1 = 0.f, s2 = 0.f;
    for (long long i = start + threadIdx.x; i < end; i += THREADS) {
        const float xv = xp[i];
        float d = dp[i];
        if (relu && fmaf(xv, a, b) <= 0.f) d = 0.f;
        s1 += d;
        s2 += d * (xv - mean);
    }
    double u = s1, v = s2;
    block_sum2(u, v);
    if (threadIdx.x == 0) {
        atomicAdd(&acc[2 * nc], u);
        atomicAdd(&acc[2 * nc + 1], v);
    }
}

// One thread per group ng: coef[3·nc + {0,1,2}] = (k1, k2, k3) of each channel nc of the group
// so that dx = k1·dy' + k2·x + k3, and dgb[nc] = dγ contribution, dgb[N·C + nc] = dβ
// contribution (summed over n by the caller).
extern "C" __global__ void mgsd_gn_bwd_coef(const float* stats, const float* gamma,
                                            const double* acc, float* coef, float* dgb,
                                            int groups, int c, int cg, long long s) {
    const int ng = blockIdx.x * blockDim.x + threadIdx.x;
    if (ng >= groups) return;
    const double mean = stats[2 * ng], rstd = stats[2 * ng + 1];
    const double m = (double)cg * (double)s;
    const long long nc0 = (long long)ng * cg;
    double a = 0.0, bsum = 0.0;  // Σ_c γ_c Σ dy',  Σ_c γ_c Σ dy'·x̂
    for (int j = 0; j < cg; ++j) {
        const long long nc = nc0 + j;
        const int ch = (int)(nc % c);
        const double sdy = acc[2 * nc], sdyxc = acc[2 * nc + 1];
        a += gamma[ch] * sdy;
        bsum += gamma[ch] * sdyxc * rstd;
        dgb[nc] = (float)(sdyxc * rstd);
        dgb[(long long)groups * cg + nc] = (float)sdy;
    }
    a /= m;
    bsum /= m;
    // dx = rstd·(γ dy' − a − x̂·bsum), x̂ = (x − mean)·rstd
    const double k2 = -rstd * rstd * bsum;
    const double k3 = -rstd * a + rstd * rstd * bsum * mean;
    for (int j = 0; j < cg; ++j) {
        const long long nc = nc0 + j;
        const int ch = (int)(nc % c);
        coef[3 * nc] = (float)(rstd * gamma[ch]);
        coef[3 * nc + 1] = (float)k2;
        coef[3 * nc + 2] = (float)k3;
    }
}

// dx = k1·dy' + k2·x + k3, dy' masked by the recomputed ReLU.
extern "C" __global__ void __launch_bounds__(THREADS)
    mgsd_gn_bwd_apply(const float* x, const float* dy, const float* stats, const float* gamma,
                      const float* beta, const float* coef, float* dx, long long total,
                      long long s, int c, int cg, int relu) {
    for (long long i = (long long)blockIdx.x * THREADS + threadIdx.x; i < total;
         i += (long long)gridDim.x * THREADS) {
        const long long nc = i / s;
        const float xv = x[i];
        float d = dy[i];
        if (relu) {
            const int ch = (int)(nc % c);
            const long long ng = nc / cg;
            const float a = stats[2 * ng + 1] * gamma[ch];
            const float b = beta[ch] - stats[2 * ng] * a;
            if (fmaf(xv, a, b) <= 0.f) d = 0.f;
        }
        dx[i] = fmaf(coef[3 * nc], d, fmaf(coef[3 * nc + 1], xv, coef[3 * nc + 2]));
    }
}

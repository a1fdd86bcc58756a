// Fused multi-head cross-attention for "many queries, few keys" (MGSD-SPEC §5).
//
// Layout everywhere: (B, H, N, dh) contiguous, `bh = b * H + h` indexes the (B·H) heads,
// row `i` of head `bh` starts at `(bh * N + i) * dh`. Head dim dh ∈ {32, 64} (template DH).
// Storage f32 or bf16; every accumulation is f32. Internal workspaces (M = kᵀv, dM, the
// logsumexp, D = rowsum(dout ∘ out), the dk/dv accumulators of the softmax backward) are f32.
//
// (a) No softmax, out = (q kᵀ)·scale · v computed as q·(kᵀ v)·scale, linear in Nq:
//     forward   M = kᵀ v                 mgsd_attn_outer   (alpha 1)
//               out = scale · q M        mgsd_attn_apply   (alpha scale)
//     backward  dM = scale · qᵀ dout     mgsd_attn_outer   (alpha scale)
//               dq = scale · dout Mᵀ     mgsd_attn_apply   (alpha scale, transposed)
//               dk = v dMᵀ               mgsd_attn_apply   (alpha 1, transposed)
//               dv = k dM                mgsd_attn_apply   (alpha 1)
//     `outer` accumulates with atomicAdd into a zeroed f32 (B·H, dh, dh) buffer.
//     In bf16 both run on tensor cores (WMMA 16×16×16, f32 accumulation); `outer` with the
//     f32 kernel's launch geometry, `apply` with several row tiles per block (launch.rs). `apply`
//     splits the f32 M into two bf16 terms (hi + lo), so M loses nothing to the bf16 operand
//     format.
//
// (b) Softmax, out = softmax(scale · q kᵀ) v:
//     forward   mgsd_attn_sm_fwd: keys/values of one head staged through shared memory in
//               tiles, online softmax (base 2) over groups of 8 keys; writes out and the
//               natural-log logsumexp lse (B·H, Nq).
//     backward  mgsd_attn_sm_bwd_pre:  D_i = Σ_c dout_ic out_ic
//               mgsd_attn_sm_bwd_dq:   query-parallel, recomputes p_ij = exp(s_ij − lse_i),
//                                      dq_i = scale Σ_j p_ij (dout_i·v_j − D_i) k_j
//               mgsd_attn_sm_bwd_dkdv: key-parallel over a slice of the queries (grid z),
//                                      dk_j = scale Σ_i ds_ij q_i, dv_j = Σ_i p_ij dout_i,
//                                      atomicAdd into zeroed f32 (B·H, Nk, dh) buffers
//               mgsd_attn_cast_f32_bf16: f32 accumulators → bf16 gradients (bf16 only).
//
// Launch geometry (block sizes, tiles, grids) is written down once in `src/launch.rs`; the
// GPU check script `gpu/check_attention.py` follows it. Keep the three in step.

#include <cuda_bf16.h>
#include <mma.h>

#include <type_traits>

typedef __nv_bfloat16 bf16;

namespace {

constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;

// ---- 4-element loads/stores (16 bytes of f32, 8 bytes of bf16), f32 in registers ----------

__device__ __forceinline__ float4 load4(const float* p) {
    return *reinterpret_cast<const float4*>(p);
}

__device__ __forceinline__ float4 load4(const bf16* p) {
    const uint2 raw = *reinterpret_cast<const uint2*>(p);
    __nv_bfloat162 lo, hi;
    *reinterpret_cast<unsigned int*>(&lo) = raw.x;
    *reinterpret_cast<unsigned int*>(&hi) = raw.y;
    const float2 a = __bfloat1622float2(lo);
    const float2 b = __bfloat1622float2(hi);
    return make_float4(a.x, a.y, b.x, b.y);
}

__device__ __forceinline__ void store4(float* p, float4 x) {
    *reinterpret_cast<float4*>(p) = x;
}

__device__ __forceinline__ void store4(bf16* p, float4 x) {
    const __nv_bfloat162 lo = __floats2bfloat162_rn(x.x, x.y);
    const __nv_bfloat162 hi = __floats2bfloat162_rn(x.z, x.w);
    uint2 raw;
    raw.x = *reinterpret_cast<const unsigned int*>(&lo);
    raw.y = *reinterpret_cast<const unsigned int*>(&hi);
    *reinterpret_cast<uint2*>(p) = raw;
}

__device__ __forceinline__ float dot4(float4 a, float4 b) {
    return a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
}

__device__ __forceinline__ float4 fma4(float s, float4 x, float4 acc) {
    acc.x = fmaf(s, x.x, acc.x);
    acc.y = fmaf(s, x.y, acc.y);
    acc.z = fmaf(s, x.z, acc.z);
    acc.w = fmaf(s, x.w, acc.w);
    return acc;
}

__device__ __forceinline__ float4 scale4(float s, float4 x) {
    return make_float4(s * x.x, s * x.y, s * x.z, s * x.w);
}

// ---- (a) no softmax ------------------------------------------------------------------------

// out[bh] += alpha · Aᵀ B over the rows [y·rows_per_block, (y+1)·rows_per_block) of head bh.
// Block: (DH/4)² threads, each owning a 4×4 tile of the DH×DH result. Any rows_per_block ≥ 1
// is correct (partial tiles are zero-padded); launch.rs picks it. Grid: (row chunks, B·H).
template <typename T, int DH>
__device__ __forceinline__ void outer_impl(const T* __restrict__ A, const T* __restrict__ Bm,
                                           float* __restrict__ out, int n, int rows_per_block,
                                           float alpha) {
    constexpr int G = DH / 4;          // 4-wide groups along a and along c
    constexpr int THREADS = G * G;     // 64 (dh 32) or 256 (dh 64)
    constexpr int RT = 32;             // rows per shared-memory tile
    __shared__ __align__(16) float sa[RT][DH];
    __shared__ __align__(16) float sb[RT][DH];

    const int bh = blockIdx.y;
    const int i0 = blockIdx.x * rows_per_block;
    const int i1 = min(n, i0 + rows_per_block);
    const T* a = A + (size_t)bh * n * DH;
    const T* b = Bm + (size_t)bh * n * DH;
    const int tid = threadIdx.x;
    const int cg = tid % G;  // columns c = cg*4 .. cg*4+3
    const int ag = tid / G;  // rows    a = ag*4 .. ag*4+3

    float4 acc[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) acc[r] = make_float4(0.f, 0.f, 0.f, 0.f);

    // Each thread stages LOADS float4 of a and of b per tile; the next tile's global loads are
    // issued before the current tile is consumed (register prefetch), so their latency overlaps
    // the FMAs.
    constexpr int LOADS = RT * G / THREADS;  // 4 (dh 32) or 2 (dh 64)
    static_assert(LOADS * THREADS == RT * G, "tile must split evenly over the threads");
    float4 pa[LOADS], pb[LOADS];
#pragma unroll
    for (int l = 0; l < LOADS; ++l) {
        const int e = tid + l * THREADS;
        const int i = i0 + e / G;
        pa[l] = make_float4(0.f, 0.f, 0.f, 0.f);
        pb[l] = pa[l];
        if (i < i1) {
            pa[l] = load4(a + (size_t)i * DH + (e % G) * 4);
            pb[l] = load4(b + (size_t)i * DH + (e % G) * 4);
        }
    }
    for (int t0 = i0; t0 < i1; t0 += RT) {
#pragma unroll
        for (int l = 0; l < LOADS; ++l) {
            const int e = tid + l * THREADS;
            *reinterpret_cast<float4*>(&sa[e / G][(e % G) * 4]) = pa[l];
            *reinterpret_cast<float4*>(&sb[e / G][(e % G) * 4]) = pb[l];
        }
        __syncthreads();
        const int t1 = t0 + RT;
#pragma unroll
        for (int l = 0; l < LOADS; ++l) {
            const int e = tid + l * THREADS;
            const int i = t1 + e / G;
            pa[l] = make_float4(0.f, 0.f, 0.f, 0.f);
            pb[l] = pa[l];
            if (i < i1) {
                pa[l] = load4(a + (size_t)i * DH + (e % G) * 4);
                pb[l] = load4(b + (size_t)i * DH + (e % G) * 4);
            }
        }
#pragma unroll 8
        for (int r = 0; r < RT; ++r) {
            const float4 av = *reinterpret_cast<const float4*>(&sa[r][ag * 4]);
            const float4 bv = *reinterpret_cast<const float4*>(&sb[r][cg * 4]);
            acc[0] = fma4(av.x, bv, acc[0]);
            acc[1] = fma4(av.y, bv, acc[1]);
            acc[2] = fma4(av.z, bv, acc[2]);
            acc[3] = fma4(av.w, bv, acc[3]);
        }
        __syncthreads();
    }
    if (i0 >= i1) return;
    float* o = out + (size_t)bh * DH * DH;
#pragma unroll
    for (int r = 0; r < 4; ++r) {
        float* row = o + (size_t)(ag * 4 + r) * DH + cg * 4;
        atomicAdd(row + 0, alpha * acc[r].x);
        atomicAdd(row + 1, alpha * acc[r].y);
        atomicAdd(row + 2, alpha * acc[r].z);
        atomicAdd(row + 3, alpha * acc[r].w);
    }
}

// out[bh, i, :] = alpha · x[bh, i, :] · Mx[bh], Mx = M or Mᵀ (transpose ≠ 0), M f32 (B·H, DH, DH).
// Block: 256 threads, a tile of RT rows; a thread owns RR rows × 8 columns
// (columns cg*4..+3 and DH/2+cg*4..+3, so a quarter-warp reads 128 contiguous bytes of M).
// Grid: (ceil(n / RT), B·H).
template <typename T, int DH>
__device__ __forceinline__ void apply_impl(const T* __restrict__ x, const float* __restrict__ m,
                                           T* __restrict__ out, int n, float alpha,
                                           int transpose) {
    constexpr int THREADS = 256;
    constexpr int CG = DH / 8;              // column groups: 4 (dh 32) or 8 (dh 64)
    constexpr int RG = THREADS / CG;        // row groups: 64 or 32
    constexpr int RR = 2;                   // rows per thread
    constexpr int RT = RG * RR;             // rows per block: 128 or 64
    __shared__ __align__(16) float sm[DH][DH + 4];
    __shared__ float sx[RT][DH + 1];

    const int bh = blockIdx.y;
    const int row0 = blockIdx.x * RT;
    const int tid = threadIdx.x;
    const float* mb = m + (size_t)bh * DH * DH;
    for (int e = tid; e < DH * DH; e += THREADS) {
        const int r = e / DH;
        const int c = e % DH;
        if (transpose) {
            sm[c][r] = mb[e];
        } else {
            sm[r][c] = mb[e];
        }
    }
    const T* xb = x + (size_t)bh * n * DH;
    for (int e = tid; e < RT * (DH / 4); e += THREADS) {
        const int r = e / (DH / 4);
        const int c4 = (e % (DH / 4)) * 4;
        const int i = row0 + r;
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (i < n) v = load4(xb + (size_t)i * DH + c4);
        sx[r][c4 + 0] = v.x;
        sx[r][c4 + 1] = v.y;
        sx[r][c4 + 2] = v.z;
        sx[r][c4 + 3] = v.w;
    }
    __syncthreads();

    const int cg = tid % CG;
    const int rg = tid / CG;
    float4 acc0[RR], acc1[RR];
#pragma unroll
    for (int rr = 0; rr < RR; ++rr) {
        acc0[rr] = make_float4(0.f, 0.f, 0.f, 0.f);
        acc1[rr] = acc0[rr];
    }
#pragma unroll 8
    for (int a = 0; a < DH; ++a) {
        const float4 m0 = *reinterpret_cast<const float4*>(&sm[a][cg * 4]);
        const float4 m1 = *reinterpret_cast<const float4*>(&sm[a][DH / 2 + cg * 4]);
#pragma unroll
        for (int rr = 0; rr < RR; ++rr) {
            const float xv = sx[rr * RG + rg][a];
            acc0[rr] = fma4(xv, m0, acc0[rr]);
            acc1[rr] = fma4(xv, m1, acc1[rr]);
        }
    }
    T* ob = out + (size_t)bh * n * DH;
#pragma unroll
    for (int rr = 0; rr < RR; ++rr) {
        const int i = row0 + rr * RG + rg;
        if (i < n) {
            store4(ob + (size_t)i * DH + cg * 4, scale4(alpha, acc0[rr]));
            store4(ob + (size_t)i * DH + DH / 2 + cg * 4, scale4(alpha, acc1[rr]));
        }
    }
}

// ---- (a) no softmax, bf16 on tensor cores ----------------------------------------------------

namespace wmma = nvcuda::wmma;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> AccTile;

// outer_impl for bf16: the same block, grid and result, the (DH/16)² 16×16 tiles of the DH×DH
// result spread over the warps (2 each), rows staged through shared memory 32 at a time (zero
// past the block's last row), Aᵀ read as a column-major fragment.
template <int DH>
__device__ __forceinline__ void outer_tc_impl(const bf16* __restrict__ A,
                                              const bf16* __restrict__ Bm, float* __restrict__ out,
                                              int n, int rows_per_block, float alpha) {
    constexpr int THREADS = (DH / 4) * (DH / 4);  // as outer_impl: 64 (dh 32) or 256 (dh 64)
    constexpr int WARPS = THREADS / 32;
    constexpr int CT = DH / 16;                   // tiles per side
    constexpr int PER_WARP = CT * CT / WARPS;     // 2
    static_assert(PER_WARP * WARPS == CT * CT && CT % PER_WARP == 0, "tiles split over warps");
    constexpr int RT = 32;                        // rows per shared-memory tile
    constexpr int CHUNKS = RT * DH / 8;           // 16-byte chunks per staged array
    // Rows padded by 16 bytes, so that the fragment loads and stores hit distinct banks.
    constexpr int LDB = DH + 8;
    constexpr int LDF = DH + 4;
    __shared__ __align__(32) bf16 sa[RT][LDB];
    __shared__ __align__(32) bf16 sb[RT][LDB];
    __shared__ __align__(32) float so[DH][LDF];

    const int bh = blockIdx.y;
    const int i0 = blockIdx.x * rows_per_block;
    const int i1 = min(n, i0 + rows_per_block);
    const bf16* a = A + (size_t)bh * n * DH;
    const bf16* b = Bm + (size_t)bh * n * DH;
    const int tid = threadIdx.x;
    const int warp = tid / 32;
    // This warp's tiles: (ta, tc0 + j), j < PER_WARP (one row of tiles, so one A fragment).
    const int t0 = warp * PER_WARP;
    const int ta = t0 / CT;
    const int tc0 = t0 % CT;

    AccTile acc[PER_WARP];
#pragma unroll
    for (int j = 0; j < PER_WARP; ++j) wmma::fill_fragment(acc[j], 0.f);

    for (int r0 = i0; r0 < i1; r0 += RT) {
        for (int e = tid; e < CHUNKS; e += THREADS) {
            const int r = e / (DH / 8);
            const int c8 = (e % (DH / 8)) * 8;
            const int i = r0 + r;
            uint4 va = make_uint4(0, 0, 0, 0), vb = va;
            if (i < i1) {
                va = *reinterpret_cast<const uint4*>(a + (size_t)i * DH + c8);
                vb = *reinterpret_cast<const uint4*>(b + (size_t)i * DH + c8);
            }
            *reinterpret_cast<uint4*>(&sa[r][c8]) = va;
            *reinterpret_cast<uint4*>(&sb[r][c8]) = vb;
        }
        __syncthreads();
#pragma unroll
        for (int ks = 0; ks < RT / 16; ++ks) {
            // Element (m, k) of Aᵀ is sa[ks·16 + k][ta·16 + m]: column-major with ldm LDB.
            wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::col_major> fa;
            wmma::load_matrix_sync(fa, &sa[ks * 16][ta * 16], LDB);
#pragma unroll
            for (int j = 0; j < PER_WARP; ++j) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> fb;
                wmma::load_matrix_sync(fb, &sb[ks * 16][(tc0 + j) * 16], LDB);
                wmma::mma_sync(acc[j], fa, fb, acc[j]);
            }
        }
        __syncthreads();
    }
    if (i0 >= i1) return;
#pragma unroll
    for (int j = 0; j < PER_WARP; ++j)
        wmma::store_matrix_sync(&so[ta * 16][(tc0 + j) * 16], acc[j], LDF, wmma::mem_row_major);
    __syncthreads();
    float* o = out + (size_t)bh * DH * DH;
    for (int e = tid; e < DH * DH; e += THREADS) atomicAdd(o + e, alpha * so[e / DH][e % DH]);
}

// apply_impl for bf16 on tensor cores: 256 threads, rows in tiles of RT (128 for dh 32, 64 for
// dh 64), ceil(tiles / gridDim.x) consecutive tiles per block (launch.rs picks the grid). Mx is
// rounded once per block into two bf16 matrices hi + lo in shared memory (row by row in Mx's
// order, so the stores are conflict-free even when transposed); per tile each warp owns one
// 16-row slice and PER_WARP 16-column slices of the result and computes x·hi + x·lo, while the
// next tile's rows are already loading into registers. Grid: (≤ ceil(n / RT), B·H).
template <int DH>
__device__ __forceinline__ void apply_tc_impl(const bf16* __restrict__ x,
                                              const float* __restrict__ m, bf16* __restrict__ out,
                                              int n, float alpha, int transpose) {
    constexpr int THREADS = 256;
    constexpr int WARPS = THREADS / 32;
    constexpr int RT = (THREADS / (DH / 8)) * 2;  // rows per tile: 128 (dh 32) or 64 (dh 64)
    constexpr int RTILES = RT / 16;
    constexpr int CT = DH / 16;
    constexpr int PER_WARP = RTILES * CT / WARPS;  // 2
    static_assert(WARPS % RTILES == 0 && (WARPS / RTILES) * PER_WARP == CT, "tiles over warps");
    constexpr int LOADS = RT * (DH / 8) / THREADS;  // 16-byte chunks of a tile per thread: 2
    static_assert(LOADS * THREADS == RT * (DH / 8), "a tile splits evenly over the threads");
    // Rows padded by 16 bytes, so that the fragment loads and stores hit distinct banks.
    constexpr int LDB = DH + 8;
    constexpr int LDF = DH + 4;
    __shared__ __align__(32) bf16 s_hi[DH][LDB];
    __shared__ __align__(32) bf16 s_lo[DH][LDB];
    __shared__ __align__(32) bf16 sx[RT][LDB];
    __shared__ __align__(32) float so[RT][LDF];

    const int bh = blockIdx.y;
    const int tiles_per_block = ((n + RT - 1) / RT + gridDim.x - 1) / gridDim.x;
    const int first = blockIdx.x * tiles_per_block * RT;
    const int last = min(n, first + tiles_per_block * RT);
    const int tid = threadIdx.x;
    const bf16* xb = x + (size_t)bh * n * DH;
    bf16* ob = out + (size_t)bh * n * DH;

    // Rows [r0, r0 + RT) of x into registers, zero past `last`.
    uint4 px[LOADS];
    auto load_tile = [&](int r0) {
#pragma unroll
        for (int l = 0; l < LOADS; ++l) {
            const int e = tid + l * THREADS;
            const int i = r0 + e / (DH / 8);
            px[l] = make_uint4(0, 0, 0, 0);
            if (i < last) px[l] = *reinterpret_cast<const uint4*>(xb + (size_t)i * DH + (e % (DH / 8)) * 8);
        }
    };
    load_tile(first);

    // Mx[r][c] = M[r][c], or M[c][r] when transposed, as hi + lo; two columns per thread.
    const float* mb = m + (size_t)bh * DH * DH;
    for (int e = tid; e < DH * DH / 2; e += THREADS) {
        const int r = e / (DH / 2);
        const int c = (e % (DH / 2)) * 2;
        const float v0 = transpose ? mb[c * DH + r] : mb[r * DH + c];
        const float v1 = transpose ? mb[(c + 1) * DH + r] : mb[r * DH + c + 1];
        const __nv_bfloat162 hi = __floats2bfloat162_rn(v0, v1);
        const float2 hf = __bfloat1622float2(hi);
        *reinterpret_cast<__nv_bfloat162*>(&s_hi[r][c]) = hi;
        *reinterpret_cast<__nv_bfloat162*>(&s_lo[r][c]) = __floats2bfloat162_rn(v0 - hf.x, v1 - hf.y);
    }

    const int warp = tid / 32;
    const int rt = warp % RTILES;
    const int tc0 = (warp / RTILES) * PER_WARP;
    for (int r0 = first; r0 < last; r0 += RT) {
#pragma unroll
        for (int l = 0; l < LOADS; ++l) {
            const int e = tid + l * THREADS;
            *reinterpret_cast<uint4*>(&sx[e / (DH / 8)][(e % (DH / 8)) * 8]) = px[l];
        }
        __syncthreads();  // sx (and, the first time, hi/lo) complete
        if (r0 + RT < last) load_tile(r0 + RT);

        AccTile acc[PER_WARP];
#pragma unroll
        for (int j = 0; j < PER_WARP; ++j) wmma::fill_fragment(acc[j], 0.f);
#pragma unroll
        for (int kt = 0; kt < DH / 16; ++kt) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> fx;
            wmma::load_matrix_sync(fx, &sx[rt * 16][kt * 16], LDB);
#pragma unroll
            for (int j = 0; j < PER_WARP; ++j) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> fm;
                wmma::load_matrix_sync(fm, &s_hi[kt * 16][(tc0 + j) * 16], LDB);
                wmma::mma_sync(acc[j], fx, fm, acc[j]);
                wmma::load_matrix_sync(fm, &s_lo[kt * 16][(tc0 + j) * 16], LDB);
                wmma::mma_sync(acc[j], fx, fm, acc[j]);
            }
        }
#pragma unroll
        for (int j = 0; j < PER_WARP; ++j)
            wmma::store_matrix_sync(&so[rt * 16][(tc0 + j) * 16], acc[j], LDF, wmma::mem_row_major);
        __syncthreads();  // so complete; sx free

        for (int e = tid; e < RT * (DH / 4); e += THREADS) {
            const int r = e / (DH / 4);
            const int c4 = (e % (DH / 4)) * 4;
            const int i = r0 + r;
            if (i < last) {
                store4(ob + (size_t)i * DH + c4,
                       scale4(alpha, *reinterpret_cast<const float4*>(&so[r][c4])));
            }
        }
        __syncthreads();  // so read before the next tile overwrites it
    }
}

// The entry points' choice: tensor cores for bf16, CUDA cores for f32.
template <typename T, int DH>
__device__ __forceinline__ void outer_dispatch(const T* a, const T* b, float* out, int n,
                                               int rows_per_block, float alpha) {
    if constexpr (std::is_same<T, bf16>::value) {
        outer_tc_impl<DH>(a, b, out, n, rows_per_block, alpha);
    } else {
        outer_impl<T, DH>(a, b, out, n, rows_per_block, alpha);
    }
}

template <typename T, int DH>
__device__ __forceinline__ void apply_dispatch(const T* x, const float* m, T* out, int n,
                                               float alpha, int transpose) {
    if constexpr (std::is_same<T, bf16>::value) {
        apply_tc_impl<DH>(x, m, out, n, alpha, transpose);
    } else {
        apply_impl<T, DH>(x, m, out, n, alpha, transpose);
    }
}

// ---- (b) softmax ----------------------------------------------------------------------------

// Thread mapping shared by the query-parallel kernels: TPQ = DH/32 threads per query (adjacent
// lanes), each owning 32 of the DH dims as 8 float4 chunks: chunk index ch = m*TPQ + h for
// m = 0..7 (h = lane % TPQ), so the lanes of a pair read adjacent 16-byte chunks of a
// shared-memory row (no bank conflict) and dot products finish with one shuffle.
template <int DH>
struct Rows {
    static constexpr int TPQ = DH / 32;
    // Keys per shared-memory tile: 2 · KT · DH · 4 bytes = 32 KiB.
    static constexpr int KT = (DH == 32) ? 128 : 64;
};

template <int TPQ>
__device__ __forceinline__ float pair_sum(float x) {
    if (TPQ == 2) x += __shfl_xor_sync(0xffffffffu, x, 1);
    return x;
}

template <typename T, int DH>
__device__ __forceinline__ void load_row_part(const T* row, int h, float4 (&dst)[8]) {
    constexpr int TPQ = DH / 32;
#pragma unroll
    for (int m = 0; m < 8; ++m) dst[m] = load4(row + (m * TPQ + h) * 4);
}

// Stages rows [t0, t0 + cnt) of the (N, DH) arrays a and b into shared memory as f32.
template <typename T, int DH, int THREADS>
__device__ __forceinline__ void stage_pair(const T* __restrict__ a, const T* __restrict__ b,
                                           int t0, int cnt, float (*sa)[DH], float (*sb)[DH]) {
    for (int e = threadIdx.x; e < cnt * (DH / 4); e += THREADS) {
        const int r = e / (DH / 4);
        const int c4 = (e % (DH / 4)) * 4;
        const size_t off = (size_t)(t0 + r) * DH + c4;
        *reinterpret_cast<float4*>(&sa[r][c4]) = load4(a + off);
        *reinterpret_cast<float4*>(&sb[r][c4]) = load4(b + off);
    }
}

// Block: 128 threads = 128/TPQ queries. Grid: (ceil(nq / (128/TPQ)), B·H).
template <typename T, int DH>
__device__ __forceinline__ void sm_fwd_impl(const T* __restrict__ q, const T* __restrict__ k,
                                            const T* __restrict__ v, T* __restrict__ out,
                                            float* __restrict__ lse, int nq, int nk,
                                            float scale) {
    constexpr int THREADS = 128;
    constexpr int TPQ = Rows<DH>::TPQ;
    constexpr int QB = THREADS / TPQ;
    constexpr int KT = Rows<DH>::KT;
    constexpr int GK = 8;  // keys per online-softmax group
    __shared__ __align__(16) float sk[KT][DH];
    __shared__ __align__(16) float sv[KT][DH];

    const int bh = blockIdx.y;
    const int tid = threadIdx.x;
    const int h = tid % TPQ;
    const int qi = blockIdx.x * QB + tid / TPQ;
    const bool valid = qi < nq;
    const float c = scale * LOG2E;  // scores in base-2 units

    float4 qr[8], acc[8];
    load_row_part<T, DH>(q + ((size_t)bh * nq + (valid ? qi : 0)) * DH, h, qr);
#pragma unroll
    for (int m = 0; m < 8; ++m) {
        qr[m] = scale4(c, qr[m]);
        acc[m] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
    float mx = -INFINITY;
    float l = 0.f;
    const T* kb = k + (size_t)bh * nk * DH;
    const T* vb = v + (size_t)bh * nk * DH;

    for (int t0 = 0; t0 < nk; t0 += KT) {
        const int kc = min(KT, nk - t0);
        __syncthreads();
        stage_pair<T, DH, THREADS>(kb, vb, t0, kc, sk, sv);
        __syncthreads();
        for (int j0 = 0; j0 < kc; j0 += GK) {
            float s[GK];
            float gmax = -INFINITY;
#pragma unroll
            for (int g = 0; g < GK; ++g) {
                const int j = j0 + g;
                float d = 0.f;
                if (j < kc) {
#pragma unroll
                    for (int m = 0; m < 8; ++m)
                        d += dot4(qr[m], *reinterpret_cast<const float4*>(&sk[j][(m * TPQ + h) * 4]));
                }
                d = pair_sum<TPQ>(d);
                s[g] = (j < kc) ? d : -INFINITY;
                gmax = fmaxf(gmax, s[g]);
            }
            const float mnew = fmaxf(mx, gmax);  // finite: the group has at least one key
            const float corr = exp2f(mx - mnew);
            l *= corr;
#pragma unroll
            for (int m = 0; m < 8; ++m) acc[m] = scale4(corr, acc[m]);
#pragma unroll
            for (int g = 0; g < GK; ++g) {
                const int j = j0 + g;
                if (j < kc) {
                    const float p = exp2f(s[g] - mnew);
                    l += p;
#pragma unroll
                    for (int m = 0; m < 8; ++m)
                        acc[m] = fma4(p, *reinterpret_cast<const float4*>(&sv[j][(m * TPQ + h) * 4]), acc[m]);
                }
            }
            mx = mnew;
        }
    }
    if (valid) {
        const float inv = 1.f / l;
        T* orow = out + ((size_t)bh * nq + qi) * DH;
#pragma unroll
        for (int m = 0; m < 8; ++m) store4(orow + (m * TPQ + h) * 4, scale4(inv, acc[m]));
        if (h == 0) lse[(size_t)bh * nq + qi] = (mx + log2f(l)) * LN2;
    }
}

// D[r] = Σ_c dout[r, c] · out[r, c] over all B·H·Nq rows. Block: 256 threads, DH/4 lanes per
// row (256/(DH/4) rows per block). Grid: (ceil(rows / (256/(DH/4)))).
template <typename T, int DH>
__device__ __forceinline__ void sm_bwd_pre_impl(const T* __restrict__ out,
                                                const T* __restrict__ dout,
                                                float* __restrict__ dsum, int rows) {
    constexpr int LPR = DH / 4;  // lanes per row: 8 or 16, divides 32
    constexpr int RPB = 256 / LPR;
    const int r = blockIdx.x * RPB + threadIdx.x / LPR;
    const int lane = threadIdx.x % LPR;
    float d = 0.f;
    if (r < rows) {
        const size_t off = (size_t)r * DH + lane * 4;
        d = dot4(load4(out + off), load4(dout + off));
    }
#pragma unroll
    for (int w = LPR / 2; w > 0; w /= 2) d += __shfl_xor_sync(0xffffffffu, d, w);
    if (r < rows && lane == 0) dsum[r] = d;
}

// Query-parallel dq. Block and grid as sm_fwd.
template <typename T, int DH>
__device__ __forceinline__ void sm_bwd_dq_impl(const T* __restrict__ q, const T* __restrict__ k,
                                               const T* __restrict__ v,
                                               const T* __restrict__ dout,
                                               const float* __restrict__ lse,
                                               const float* __restrict__ dsum,
                                               T* __restrict__ dq, int nq, int nk, float scale) {
    constexpr int THREADS = 128;
    constexpr int TPQ = Rows<DH>::TPQ;
    constexpr int QB = THREADS / TPQ;
    constexpr int KT = Rows<DH>::KT;
    __shared__ __align__(16) float sk[KT][DH];
    __shared__ __align__(16) float sv[KT][DH];

    const int bh = blockIdx.y;
    const int tid = threadIdx.x;
    const int h = tid % TPQ;
    const int qi = blockIdx.x * QB + tid / TPQ;
    const bool valid = qi < nq;
    const size_t row = (size_t)bh * nq + (valid ? qi : 0);
    const float c = scale * LOG2E;

    float4 qr[8], dor[8], acc[8];
    load_row_part<T, DH>(q + row * DH, h, qr);
    load_row_part<T, DH>(dout + row * DH, h, dor);
#pragma unroll
    for (int m = 0; m < 8; ++m) {
        qr[m] = scale4(c, qr[m]);
        acc[m] = make_float4(0.f, 0.f, 0.f, 0.f);
    }
    const float lse2 = lse[row] * LOG2E;
    const float di = dsum[row];
    const T* kb = k + (size_t)bh * nk * DH;
    const T* vb = v + (size_t)bh * nk * DH;

    for (int t0 = 0; t0 < nk; t0 += KT) {
        const int kc = min(KT, nk - t0);
        __syncthreads();
        stage_pair<T, DH, THREADS>(kb, vb, t0, kc, sk, sv);
        __syncthreads();
#pragma unroll 2
        for (int j = 0; j < kc; ++j) {
            float s = 0.f, dp = 0.f;
#pragma unroll
            for (int m = 0; m < 8; ++m) {
                const int col = (m * TPQ + h) * 4;
                s += dot4(qr[m], *reinterpret_cast<const float4*>(&sk[j][col]));
                dp += dot4(dor[m], *reinterpret_cast<const float4*>(&sv[j][col]));
            }
            s = pair_sum<TPQ>(s);
            dp = pair_sum<TPQ>(dp);
            const float ds = exp2f(s - lse2) * (dp - di);
#pragma unroll
            for (int m = 0; m < 8; ++m)
                acc[m] = fma4(ds, *reinterpret_cast<const float4*>(&sk[j][(m * TPQ + h) * 4]), acc[m]);
        }
    }
    if (valid) {
        T* drow = dq + row * DH;
#pragma unroll
        for (int m = 0; m < 8; ++m) store4(drow + (m * TPQ + h) * 4, scale4(scale, acc[m]));
    }
}

// Key-parallel dk/dv over the queries [z·q_per_block, (z+1)·q_per_block). Block: 128 threads =
// 128/TPQ keys. Queries staged through shared memory in tiles of QT. Grid:
// (ceil(nk / (128/TPQ)), B·H, ceil(nq / q_per_block)). dk_acc, dv_acc: zeroed f32 (B·H, nk, DH).
template <typename T, int DH>
__device__ __forceinline__ void sm_bwd_dkdv_impl(const T* __restrict__ q,
                                                 const T* __restrict__ k,
                                                 const T* __restrict__ v,
                                                 const T* __restrict__ dout,
                                                 const float* __restrict__ lse,
                                                 const float* __restrict__ dsum,
                                                 float* __restrict__ dk_acc,
                                                 float* __restrict__ dv_acc, int nq, int nk,
                                                 float scale, int q_per_block) {
    constexpr int THREADS = 128;
    constexpr int TPQ = Rows<DH>::TPQ;
    constexpr int KB = THREADS / TPQ;
    constexpr int QT = Rows<DH>::KT;  // same 32 KiB budget
    __shared__ __align__(16) float sq[QT][DH];
    __shared__ __align__(16) float sdo[QT][DH];
    __shared__ float slse[QT];
    __shared__ float sdsum[QT];

    const int bh = blockIdx.y;
    const int tid = threadIdx.x;
    const int h = tid % TPQ;
    const int kj = blockIdx.x * KB + tid / TPQ;
    const bool valid = kj < nk;
    const size_t krow = (size_t)bh * nk + (valid ? kj : 0);
    const float c = scale * LOG2E;

    float4 kr[8], vr[8], dk[8], dv[8];
    load_row_part<T, DH>(k + krow * DH, h, kr);
    load_row_part<T, DH>(v + krow * DH, h, vr);
#pragma unroll
    for (int m = 0; m < 8; ++m) {
        kr[m] = scale4(c, kr[m]);
        dk[m] = make_float4(0.f, 0.f, 0.f, 0.f);
        dv[m] = dk[m];
    }
    const int i0 = blockIdx.z * q_per_block;
    const int i1 = min(nq, i0 + q_per_block);
    const T* qb = q + (size_t)bh * nq * DH;
    const T* db = dout + (size_t)bh * nq * DH;
    const float* lb = lse + (size_t)bh * nq;
    const float* sb = dsum + (size_t)bh * nq;

    for (int t0 = i0; t0 < i1; t0 += QT) {
        const int qc = min(QT, i1 - t0);
        __syncthreads();
        stage_pair<T, DH, THREADS>(qb, db, t0, qc, sq, sdo);
        for (int e = tid; e < qc; e += THREADS) {
            slse[e] = lb[t0 + e] * LOG2E;
            sdsum[e] = sb[t0 + e];
        }
        __syncthreads();
#pragma unroll 2
        for (int i = 0; i < qc; ++i) {
            float s = 0.f, dp = 0.f;
#pragma unroll
            for (int m = 0; m < 8; ++m) {
                const int col = (m * TPQ + h) * 4;
                s += dot4(kr[m], *reinterpret_cast<const float4*>(&sq[i][col]));
                dp += dot4(vr[m], *reinterpret_cast<const float4*>(&sdo[i][col]));
            }
            s = pair_sum<TPQ>(s);
            dp = pair_sum<TPQ>(dp);
            const float p = exp2f(s - slse[i]);
            const float ds = p * (dp - sdsum[i]);
#pragma unroll
            for (int m = 0; m < 8; ++m) {
                const int col = (m * TPQ + h) * 4;
                dv[m] = fma4(p, *reinterpret_cast<const float4*>(&sdo[i][col]), dv[m]);
                dk[m] = fma4(ds, *reinterpret_cast<const float4*>(&sq[i][col]), dk[m]);
            }
        }
    }
    if (!valid || i0 >= i1) return;
    float* dkr = dk_acc + krow * DH;
    float* dvr = dv_acc + krow * DH;
#pragma unroll
    for (int m = 0; m < 8; ++m) {
        const int col = (m * TPQ + h) * 4;
        atomicAdd(dkr + col + 0, scale * dk[m].x);
        atomicAdd(dkr + col + 1, scale * dk[m].y);
        atomicAdd(dkr + col + 2, scale * dk[m].z);
        atomicAdd(dkr + col + 3, scale * dk[m].w);
        atomicAdd(dvr + col + 0, dv[m].x);
        atomicAdd(dvr + col + 1, dv[m].y);
        atomicAdd(dvr + col + 2, dv[m].z);
        atomicAdd(dvr + col + 3, dv[m].w);
    }
}

}  // namespace

// ---- entry points: mgsd_attn_<op>_<f32|bf16>_d<32|64> ---------------------------------------

#define MGSD_ATTN_ENTRIES(T, TN, DH)                                                              \
    extern "C" __global__ void __launch_bounds__((DH / 4) * (DH / 4))                             \
        mgsd_attn_outer_##TN##_d##DH(const T* a, const T* b, float* out, int n,                   \
                                     int rows_per_block, float alpha) {                           \
        outer_dispatch<T, DH>(a, b, out, n, rows_per_block, alpha);                               \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(256)                                             \
        mgsd_attn_apply_##TN##_d##DH(const T* x, const float* m, T* out, int n, float alpha,      \
                                     int transpose) {                                             \
        apply_dispatch<T, DH>(x, m, out, n, alpha, transpose);                                    \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(128)                                             \
        mgsd_attn_sm_fwd_##TN##_d##DH(const T* q, const T* k, const T* v, T* out, float* lse,     \
                                      int nq, int nk, float scale) {                              \
        sm_fwd_impl<T, DH>(q, k, v, out, lse, nq, nk, scale);                                     \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(256)                                             \
        mgsd_attn_sm_bwd_pre_##TN##_d##DH(const T* out, const T* dout, float* dsum, int rows) {   \
        sm_bwd_pre_impl<T, DH>(out, dout, dsum, rows);                                            \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(128)                                             \
        mgsd_attn_sm_bwd_dq_##TN##_d##DH(const T* q, const T* k, const T* v, const T* dout,       \
                                         const float* lse, const float* dsum, T* dq, int nq,      \
                                         int nk, float scale) {                                   \
        sm_bwd_dq_impl<T, DH>(q, k, v, dout, lse, dsum, dq, nq, nk, scale);                       \
    }                                                                                             \
    extern "C" __global__ void __launch_bounds__(128)                                             \
        mgsd_attn_sm_bwd_dkdv_##TN##_d##DH(const T* q, const T* k, const T* v, const T* dout,     \
                                           const float* lse, const float* dsum, float* dk_acc,    \
                                           float* dv_acc, int nq, int nk, float scale,            \
                                           int q_per_block) {                                     \
        sm_bwd_dkdv_impl<T, DH>(q, k, v, dout, lse, dsum, dk_acc, dv_acc, nq, nk, scale,          \
                                q_per_block);                                                     \
    }

MGSD_ATTN_ENTRIES(float, f32, 32)
MGSD_ATTN_ENTRIES(float, f32, 64)
MGSD_ATTN_ENTRIES(bf16, bf16, 32)
MGSD_ATTN_ENTRIES(bf16, bf16, 64)

// f32 → bf16, round to nearest even. Block: 256 threads. Grid: (min(ceil(n / 256), 65535·…)),
// grid-stride loop.
extern "C" __global__ void __launch_bounds__(256)
    mgsd_attn_cast_f32_bf16(const float* in, bf16* out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        out[i] = __float2bfloat16_rn(in[i]);
}

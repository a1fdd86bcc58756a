// The bf16 copies of mgsd-nn's bf16 cuDNN Conv3d (`ConvPrecision::Bf16`): f32 operands are
// rounded to bf16 (round to nearest even) into a scratch copy for cuDNN's tensor cores, and
// cuDNN's bf16 results come back as f32, with the bias and the residual added on the way
// (the f32 twin of that epilogue is conv_epilogue.cu). Launch: src/candle_ops/conv_bf16.rs.
//
// A tensor is (N, C, S), S = D·H·W (a filter is (K, C, R) the same way, R = kd·kh·kw). The
// bf16 copy is channels-last NSC (NDHWC, cuDNN's native tensor-core layout; NCS copies made
// the step 1.6× slower on the H200, cuDNN transposing internally). The threads walk tiles of
// 32 consecutive positions of one channel: a warp writes (or reads) 32 consecutive f32 values of the NCS tensor, and the
// warps of a block cover the other channels of the same 32 positions, so the strided bf16
// side is served from cache instead of DRAM.
//
// Grid-stride loops without shared memory or atomics, like resample.cu, so
// mgsd-nn/tests/cuda_kernels_on_host.rs runs this file on the CPU too.

#ifdef __CUDACC__
#include <cuda_bf16.h>
#endif

#define MGSD_GRID_STRIDE(i, total)                                                        \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (total); \
         i += (long long)gridDim.x * blockDim.x)

#define MGSD_TILE 32

// Iterations of a conversion: every (n, tile, channel, lane), the last tile of each
// (n, channel) padded to 32 lanes.
__device__ __forceinline__ long long mgsd_bf16_iterations(long long n, long long s, int c) {
    return n * ((s + MGSD_TILE - 1) / MGSD_TILE) * c * MGSD_TILE;
}

// Iteration `it` as (NCS index, NSC index of the copy); false for a padding lane.
__device__ __forceinline__ bool mgsd_bf16_element(long long it, long long s, int c,
                                                  long long* ncs, long long* copy) {
    const long long tiles = (s + MGSD_TILE - 1) / MGSD_TILE;
    const long long lane = it % MGSD_TILE;
    const long long ch = (it / MGSD_TILE) % c;
    const long long tile = (it / ((long long)MGSD_TILE * c)) % tiles;
    const long long n = it / ((long long)MGSD_TILE * c * tiles);
    const long long pos = tile * MGSD_TILE + lane;
    if (pos >= s) return false;
    *ncs = (n * c + ch) * s + pos;
    *copy = (n * s + pos) * c + ch;
    return true;
}

// y = bf16(x): x f32 (N, C, S); y its NSC copy.
extern "C" __global__ void mgsd_f32_to_bf16(const float* x, __nv_bfloat16* y, long long n,
                                            long long s, int c) {
    const long long total = mgsd_bf16_iterations(n, s, c);
    MGSD_GRID_STRIDE(it, total) {
        long long ncs, copy;
        if (mgsd_bf16_element(it, s, c, &ncs, &copy)) y[copy] = __float2bfloat16(x[ncs]);
    }
}

// out = f32(y) + bias[c] + r: y a bf16 NSC tensor, out f32 (N, C, S); `bias` and `r` may be
// null. With both, they are summed first, as in conv_epilogue.cu.
extern "C" __global__ void mgsd_bf16_to_f32(const __nv_bfloat16* y, const float* bias,
                                            const float* r, float* out, long long n, long long s,
                                            int c) {
    const long long total = mgsd_bf16_iterations(n, s, c);
    MGSD_GRID_STRIDE(it, total) {
        long long i, copy;
        if (!mgsd_bf16_element(it, s, c, &i, &copy)) continue;
        float v = __bfloat162float(y[copy]);
        if (bias && r) {
            v += bias[(i / s) % c] + r[i];
        } else if (bias) {
            v += bias[(i / s) % c];
        } else if (r) {
            v += r[i];
        }
        out[i] = v;
    }
}

#undef MGSD_TILE
#undef MGSD_GRID_STRIDE

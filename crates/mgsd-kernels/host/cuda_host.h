// Just enough of CUDA's built-ins to compile a grid-stride kernel file as plain C++ and run it
// on the CPU, one emulated thread after another. Only for kernels without shared memory,
// synchronisation, warp intrinsics or atomics (kernels/resample.cu, conv_epilogue.cu and
// conv_bf16.cu are written that way), where a sequential run computes exactly what the GPU
// does. Used by kernels_host.cpp.
#pragma once

#include <cstring>

struct mgsd_dim3 {
    unsigned x = 1, y = 1, z = 1;
};

inline mgsd_dim3 blockIdx, threadIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)

// Runs `kernel()` once for every thread of a 1-d grid of `grid` blocks of `block` threads.
template <class Kernel>
void mgsd_launch(unsigned grid, unsigned block, Kernel&& kernel) {
    gridDim.x = grid;
    blockDim.x = block;
    for (unsigned b = 0; b < grid; ++b) {
        for (unsigned t = 0; t < block; ++t) {
            blockIdx.x = b;
            threadIdx.x = t;
            kernel();
        }
    }
}

// cuda_bf16.h's conversions for finite values and infinities: round to nearest even, and back
// by widening. (A NaN becomes a quiet NaN of the same sign; CUDA's payload may differ.)
struct __nv_bfloat16 {
    unsigned short bits;
};

inline __nv_bfloat16 __float2bfloat16(float f) {
    unsigned u;
    std::memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {(unsigned short)((u >> 16) | 0x40u)};
    u += 0x7fffu + ((u >> 16) & 1u);
    return {(unsigned short)(u >> 16)};
}

inline float __bfloat162float(__nv_bfloat16 b) {
    const unsigned u = (unsigned)b.bits << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

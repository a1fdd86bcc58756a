// Just enough of CUDA's built-ins to compile a grid-stride kernel file as plain C++ and run it
// on the CPU, one emulated thread after another. Only for kernels without shared memory,
// synchronisation, warp intrinsics or atomics (kernels/resample.cu and conv_epilogue.cu are written that way), where
// a sequential run computes exactly what the GPU does. Used by kernels_host.cpp.
#pragma once

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

// The epilogue of mgsd-nn's cuDNN Conv3d, run in place on the convolution's output y
// (N, C, S), S = D·H·W: y += bias[c] (+ residual). Doing it inside the op instead of with
// candle ops keeps one full-size tensor per convolution (two with a residual) out of the
// autograd graph. Grid-stride loops without shared memory or atomics, like resample.cu, so
// mgsd-nn/tests/cuda_kernels_on_host.rs runs this file on the CPU too. Launch:
// src/candle_ops/conv_epilogue.rs.

#define MGSD_GRID_STRIDE(i, total)                                                        \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (total); \
         i += (long long)gridDim.x * blockDim.x)

extern "C" __global__ void mgsd_conv_bias_add(float* y, const float* bias, long long total,
                                              long long s, int c) {
    MGSD_GRID_STRIDE(i, total) { y[i] += bias[(i / s) % c]; }
}

// y += bias[c] + r: the bias and the residual are summed first, then added to y.
extern "C" __global__ void mgsd_conv_bias_residual_add(float* y, const float* bias, const float* r,
                                                       long long total, long long s, int c) {
    MGSD_GRID_STRIDE(i, total) { y[i] += bias[(i / s) % c] + r[i]; }
}

// y += r (a convolution without bias, with a residual).
extern "C" __global__ void mgsd_conv_residual_add(float* y, const float* r, long long total) {
    MGSD_GRID_STRIDE(i, total) { y[i] += r[i]; }
}

#undef MGSD_GRID_STRIDE

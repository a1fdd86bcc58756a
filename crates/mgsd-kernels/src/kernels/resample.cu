// The U-Net's resampling and the discriminator's activation on CUDA, forward and backward:
// max pooling 2×2×2 / stride 2, nearest ×2 upsampling (optionally fused with the decoder's skip
// addition) and LeakyReLU. They are the CUDA twins of mgsd-nn's CPU ops (`pool3d.rs`,
// `upsample.rs`, `activation.rs`) and replace candle compositions that kept several full-size
// temporaries alive for autograd (an f32 mask, a broadcast copy, a product per LeakyReLU).
//
// Tensors are f32, contiguous `(P, D, H, W)` with P = N·C planes; `d, h, w` are always the
// sizes of the *input* of the forward. Every kernel is a grid-stride loop over the elements it
// writes, one thread per element, and writes every element (outputs need no zeroing); none
// uses shared memory, atomics or synchronisation, which is what lets
// `mgsd-nn/tests/cuda_kernels_on_host.rs` run this very file on the CPU.
//
// max pool   mgsd_maxpool2x_fwd   y, arg (u8: window position 0..7, order d, h, w)  per output
//            mgsd_maxpool2x_bwd   dx = dy where the window chose this element, else 0  per input
// upsample   mgsd_upsample2x_fwd  y = x[parent] (+ skip, when skip is not null)    per output
//            mgsd_upsample2x_bwd  dx = Σ of the 2×2×2 block of dy                   per input
// leaky      mgsd_leaky_relu_fwd  y = x > 0 ? x : slope·x                           per element
//            mgsd_leaky_relu_bwd  dx = x > 0 ? dy : slope·dy                         per element
// adaptive   mgsd_apool_w, _h, _d      sums over the W bins, then H, then D (÷ volume)
// avg pool   mgsd_apool_bwd_d, _h, _w  dy ÷ volume spread back over D, then H, then W
//
// Adaptive average pooling (`F.adaptive_avg_pool3d`, PyTorch's bins [⌊i·In/Out⌋,
// ⌈(i+1)·In/Out⌉), which overlap when Out does not divide In) runs in three separable passes
// through two temporaries, one thread per element each pass writes, adding in the same order
// as the CPU op (mgsd-nn `adaptive_pool.rs`), so the results are bit-identical to it. Sizes:
// `d, h, w` the input's, `od, oh, ow` the output grid's.
//
// Pooling semantics are PyTorch's: the first maximum in window order wins a tie, a NaN wins
// over any number, odd sizes are floored (the last plane/row/column of an odd axis gets a zero
// gradient). Launch geometry: src/candle_ops/resample.rs.

#define MGSD_GRID_STRIDE(i, total)                                                        \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (total); \
         i += (long long)gridDim.x * blockDim.x)

extern "C" __global__ void mgsd_maxpool2x_fwd(const float* x, float* y, unsigned char* arg,
                                              long long total_out, int d, int h, int w) {
    const int od = d / 2, oh = h / 2, ow = w / 2;
    MGSD_GRID_STRIDE(o, total_out) {
        const int k = (int)(o % ow);
        const int j = (int)((o / ow) % oh);
        const int i = (int)((o / ((long long)ow * oh)) % od);
        const long long p = o / ((long long)ow * oh * od);
        const float* base = x + p * d * h * w + (long long)(2 * i) * h * w + (long long)(2 * j) * w +
                            2 * k;
        float best = base[0];
        unsigned char pos = 0;
        for (int q = 1; q < 8; ++q) {
            const float v = base[(long long)(q >> 2) * h * w + ((q >> 1) & 1) * w + (q & 1)];
            // PyTorch: `if ((val > maxval) || isnan(val))`, scanning d, h, w.
            if (v > best || v != v) {
                best = v;
                pos = (unsigned char)q;
            }
        }
        y[o] = best;
        arg[o] = pos;
    }
}

extern "C" __global__ void mgsd_maxpool2x_bwd(const float* dy, const unsigned char* arg, float* dx,
                                              long long total_in, int d, int h, int w) {
    const int od = d / 2, oh = h / 2, ow = w / 2;
    MGSD_GRID_STRIDE(e, total_in) {
        const int c = (int)(e % w);
        const int b = (int)((e / w) % h);
        const int a = (int)((e / ((long long)w * h)) % d);
        const long long p = e / ((long long)w * h * d);
        float g = 0.f;
        if (a / 2 < od && b / 2 < oh && c / 2 < ow) {
            const long long o =
                ((p * od + a / 2) * oh + b / 2) * (long long)ow + c / 2;
            const int q = ((a & 1) << 2) | ((b & 1) << 1) | (c & 1);
            if (arg[o] == q) g = dy[o];
        }
        dx[e] = g;
    }
}

extern "C" __global__ void mgsd_upsample2x_fwd(const float* x, const float* skip, float* y,
                                               long long total_out, int d, int h, int w) {
    const int w2 = 2 * w, h2 = 2 * h, d2 = 2 * d;
    MGSD_GRID_STRIDE(o, total_out) {
        const int c = (int)(o % w2);
        const int b = (int)((o / w2) % h2);
        const int a = (int)((o / ((long long)w2 * h2)) % d2);
        const long long p = o / ((long long)w2 * h2 * d2);
        const float v = x[((p * d + a / 2) * h + b / 2) * (long long)w + c / 2];
        y[o] = skip ? v + skip[o] : v;
    }
}

extern "C" __global__ void mgsd_upsample2x_bwd(const float* dy, float* dx, long long total_in,
                                               int d, int h, int w) {
    const int w2 = 2 * w, h2 = 2 * h;
    MGSD_GRID_STRIDE(e, total_in) {
        const int k = (int)(e % w);
        const int j = (int)((e / w) % h);
        const int i = (int)((e / ((long long)w * h)) % d);
        const long long p = e / ((long long)w * h * d);
        const float* plane = dy + p * 8 * d * h * w;
        // The CPU twin's order: rows (0,0), (0,1), (1,0), (1,1), each adding its pair's sum.
        float s = 0.f;
        for (int r = 0; r < 4; ++r) {
            const float* row = plane + ((long long)(2 * i + (r >> 1)) * h2 + 2 * j + (r & 1)) * w2;
            s += row[2 * k] + row[2 * k + 1];
        }
        dx[e] = s;
    }
}

extern "C" __global__ void mgsd_leaky_relu_fwd(const float* x, float* y, long long n,
                                               float slope) {
    MGSD_GRID_STRIDE(i, n) {
        const float v = x[i];
        y[i] = v > 0.f ? v : v * slope;
    }
}

extern "C" __global__ void mgsd_leaky_relu_bwd(const float* x, const float* dy, float* dx,
                                               long long n, float slope) {
    MGSD_GRID_STRIDE(i, n) {
        const float g = dy[i];
        dx[i] = x[i] > 0.f ? g : g * slope;
    }
}

// Bin [start, end) of output cell i of an axis of length `in` pooled to `out` cells.
__device__ __forceinline__ int mgsd_bin_start(int i, int in, int out) {
    return (int)(((long long)i * in) / out);
}
__device__ __forceinline__ int mgsd_bin_end(int i, int in, int out) {
    return (int)((((long long)i + 1) * in + out - 1) / out);
}

// t1 (P, d, h, ow) = Σ over each W bin of x (P, d, h, w).
extern "C" __global__ void mgsd_apool_w(const float* x, float* t1, long long total, int w, int ow) {
    MGSD_GRID_STRIDE(o, total) {
        const int k = (int)(o % ow);
        const float* row = x + (o / ow) * w;
        float s = 0.f;
        for (int r = mgsd_bin_start(k, w, ow); r < mgsd_bin_end(k, w, ow); ++r) s += row[r];
        t1[o] = s;
    }
}

// t2 (P, d, oh, ow) = Σ over each H bin of t1 (P, d, h, ow).
extern "C" __global__ void mgsd_apool_h(const float* t1, float* t2, long long total, int h, int oh,
                                        int ow) {
    MGSD_GRID_STRIDE(o, total) {
        const int k = (int)(o % ow);
        const int j = (int)((o / ow) % oh);
        const float* plane = t1 + (o / ((long long)ow * oh)) * h * ow;
        float s = 0.f;
        for (int r = mgsd_bin_start(j, h, oh); r < mgsd_bin_end(j, h, oh); ++r) s += plane[r * ow + k];
        t2[o] = s;
    }
}

// y (P, od, oh, ow) = Σ over each D bin of t2 (P, d, oh, ow), ÷ the bin's volume.
extern "C" __global__ void mgsd_apool_d(const float* t2, float* y, long long total, int d, int h,
                                        int w, int od, int oh, int ow) {
    MGSD_GRID_STRIDE(o, total) {
        const int k = (int)(o % ow);
        const int j = (int)((o / ow) % oh);
        const int i = (int)((o / ((long long)ow * oh)) % od);
        const long long p = o / ((long long)ow * oh * od);
        const int s0 = mgsd_bin_start(i, d, od), e0 = mgsd_bin_end(i, d, od);
        float s = 0.f;
        for (int r = s0; r < e0; ++r) s += t2[((p * d + r) * oh + j) * (long long)ow + k];
        const int vol = (e0 - s0) * (mgsd_bin_end(j, h, oh) - mgsd_bin_start(j, h, oh)) *
                        (mgsd_bin_end(k, w, ow) - mgsd_bin_start(k, w, ow));
        y[o] = s / (float)vol;
    }
}

// t2 (P, d, oh, ow) = Σ over the D bins i containing r of dy[i, j, k] ÷ volume(i, j, k).
extern "C" __global__ void mgsd_apool_bwd_d(const float* dy, float* t2, long long total, int d,
                                            int h, int w, int od, int oh, int ow) {
    MGSD_GRID_STRIDE(o, total) {
        const int k = (int)(o % ow);
        const int j = (int)((o / ow) % oh);
        const int r = (int)((o / ((long long)ow * oh)) % d);
        const long long p = o / ((long long)ow * oh * d);
        const int hw = (mgsd_bin_end(j, h, oh) - mgsd_bin_start(j, h, oh)) *
                       (mgsd_bin_end(k, w, ow) - mgsd_bin_start(k, w, ow));
        float s = 0.f;
        for (int i = 0; i < od; ++i) {
            const int s0 = mgsd_bin_start(i, d, od), e0 = mgsd_bin_end(i, d, od);
            if (r < s0 || r >= e0) continue;
            s += dy[((p * od + i) * oh + j) * (long long)ow + k] / (float)((e0 - s0) * hw);
        }
        t2[o] = s;
    }
}

// t1 (P, d, h, ow) = Σ over the H bins j containing r of t2[j].
extern "C" __global__ void mgsd_apool_bwd_h(const float* t2, float* t1, long long total, int h,
                                            int oh, int ow) {
    MGSD_GRID_STRIDE(o, total) {
        const int k = (int)(o % ow);
        const int r = (int)((o / ow) % h);
        const float* plane = t2 + (o / ((long long)ow * h)) * oh * ow;
        float s = 0.f;
        for (int j = 0; j < oh; ++j) {
            if (r < mgsd_bin_start(j, h, oh) || r >= mgsd_bin_end(j, h, oh)) continue;
            s += plane[j * ow + k];
        }
        t1[o] = s;
    }
}

// dx (P, d, h, w) = Σ over the W bins k containing r of t1[k].
extern "C" __global__ void mgsd_apool_bwd_w(const float* t1, float* dx, long long total, int w,
                                            int ow) {
    MGSD_GRID_STRIDE(e, total) {
        const int r = (int)(e % w);
        const float* row = t1 + (e / w) * ow;
        float s = 0.f;
        for (int k = 0; k < ow; ++k) {
            if (r < mgsd_bin_start(k, w, ow) || r >= mgsd_bin_end(k, w, ow)) continue;
            s += row[k];
        }
        dx[e] = s;
    }
}

#undef MGSD_GRID_STRIDE

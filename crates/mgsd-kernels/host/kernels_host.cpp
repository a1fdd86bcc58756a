// Runs the kernels of ../src/kernels/resample.cu, conv_epilogue.cu and conv_bf16.cu on the CPU (through
// cuda_host.h), so that mgsd-nn's test `cuda_kernels_on_host` can compare the CUDA source
// itself with the CPU twins without a GPU. The grid is deliberately small (3 blocks of 32 threads) so that every
// grid-stride loop takes several turns.
//
// usage: kernels_host KERNEL P D H W SLOPE INPUT... OUTPUT...
//   maxpool_fwd   x            -> y arg        (d, h, w: the forward's input sizes)
//   maxpool_bwd   dy arg       -> dx
//   upsample_fwd  x            -> y
//   upsample_add  x skip       -> y
//   upsample_bwd  dy           -> dx
//   leaky_fwd     x            -> y            (n = P·D·H·W elements)
//   leaky_bwd     x dy         -> dx
//   apool_fwd OD OH OW      x          -> y   (the three passes of adaptive average pooling)
//   apool_bwd OD OH OW      dy         -> dx
//   conv_bias_add           y bias     -> y   (P = N, D = C, H = S, W = 1)
//   conv_bias_residual_add  y bias r   -> y
//   conv_residual_add       y r        -> y
//   f32_to_bf16             x          -> y   (P = N, D = C, H = S, W = 1; y NSC)
//   bf16_to_f32             y          -> x
//   bf16_to_f32_bias        y bias     -> x
//   bf16_to_f32_bias_residual y bias r -> x
//   bf16_to_f32_residual    y r        -> x
// Files are raw little-endian f32 (arg: u8; the bf16 copies: u16 bit patterns). Exit status 2 on bad usage or I/O errors.
#include "cuda_host.h"

#include "../src/kernels/conv_bf16.cu"
#include "../src/kernels/conv_epilogue.cu"
#include "../src/kernels/resample.cu"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr unsigned GRID = 3, BLOCK = 32;

[[noreturn]] void fail(const std::string& what) {
    std::fprintf(stderr, "kernels_host: %s\n", what.c_str());
    std::exit(2);
}

template <class T>
std::vector<T> read(const char* path, long long count) {
    std::vector<T> v(count);
    FILE* f = std::fopen(path, "rb");
    if (!f) fail(std::string("cannot open ") + path);
    if (std::fread(v.data(), sizeof(T), count, f) != (size_t)count) fail(std::string("short ") + path);
    std::fclose(f);
    return v;
}

template <class T>
void write(const char* path, const std::vector<T>& v) {
    FILE* f = std::fopen(path, "wb");
    if (!f) fail(std::string("cannot create ") + path);
    if (std::fwrite(v.data(), sizeof(T), v.size(), f) != v.size()) fail(std::string("short write ") + path);
    std::fclose(f);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 9) fail("usage: kernels_host KERNEL P D H W SLOPE INPUT... OUTPUT...");
    const std::string k = argv[1];
    const long long p = std::atoll(argv[2]);
    const int d = std::atoi(argv[3]), h = std::atoi(argv[4]), w = std::atoi(argv[5]);
    const float slope = (float)std::atof(argv[6]);
    char** io = argv + 7;
    int nio = argc - 7;
    int od = 0, oh = 0, ow = 0;  // the adaptive pooling's output grid
    if (k.rfind("apool", 0) == 0) {
        if (nio < 3) fail(k + ": expected OD OH OW");
        od = std::atoi(io[0]), oh = std::atoi(io[1]), ow = std::atoi(io[2]);
        io += 3;
        nio -= 3;
    }
    const long long in = p * d * h * w;
    const long long pooled = p * (d / 2) * (h / 2) * (w / 2);
    const long long up = 8 * in;
    auto need = [&](int n) {
        if (nio != n) fail(k + ": expected " + std::to_string(n) + " files");
    };
    if (k == "maxpool_fwd") {
        need(3);
        auto x = read<float>(io[0], in);
        std::vector<float> y(pooled);
        std::vector<unsigned char> arg(pooled);
        mgsd_launch(GRID, BLOCK, [&] { mgsd_maxpool2x_fwd(x.data(), y.data(), arg.data(), pooled, d, h, w); });
        write(io[1], y);
        write(io[2], arg);
    } else if (k == "maxpool_bwd") {
        need(3);
        auto dy = read<float>(io[0], pooled);
        auto arg = read<unsigned char>(io[1], pooled);
        std::vector<float> dx(in);
        mgsd_launch(GRID, BLOCK, [&] { mgsd_maxpool2x_bwd(dy.data(), arg.data(), dx.data(), in, d, h, w); });
        write(io[2], dx);
    } else if (k == "upsample_fwd" || k == "upsample_add") {
        const bool add = k == "upsample_add";
        need(add ? 3 : 2);
        auto x = read<float>(io[0], in);
        std::vector<float> skip = add ? read<float>(io[1], up) : std::vector<float>();
        std::vector<float> y(up);
        const float* s = add ? skip.data() : nullptr;
        mgsd_launch(GRID, BLOCK, [&] { mgsd_upsample2x_fwd(x.data(), s, y.data(), up, d, h, w); });
        write(io[add ? 2 : 1], y);
    } else if (k == "upsample_bwd") {
        need(2);
        auto dy = read<float>(io[0], up);
        std::vector<float> dx(in);
        mgsd_launch(GRID, BLOCK, [&] { mgsd_upsample2x_bwd(dy.data(), dx.data(), in, d, h, w); });
        write(io[1], dx);
    } else if (k == "leaky_fwd") {
        need(2);
        auto x = read<float>(io[0], in);
        std::vector<float> y(in);
        mgsd_launch(GRID, BLOCK, [&] { mgsd_leaky_relu_fwd(x.data(), y.data(), in, slope); });
        write(io[1], y);
    } else if (k == "leaky_bwd") {
        need(3);
        auto x = read<float>(io[0], in);
        auto dy = read<float>(io[1], in);
        std::vector<float> dx(in);
        mgsd_launch(GRID, BLOCK, [&] { mgsd_leaky_relu_bwd(x.data(), dy.data(), dx.data(), in, slope); });
        write(io[2], dx);
    } else if (k == "apool_fwd") {
        need(2);
        auto x = read<float>(io[0], in);
        std::vector<float> t1(p * d * h * ow), t2(p * d * oh * ow), y(p * od * oh * ow);
        const long long n1 = t1.size(), n2 = t2.size(), n3 = y.size();
        mgsd_launch(GRID, BLOCK, [&] { mgsd_apool_w(x.data(), t1.data(), n1, w, ow); });
        mgsd_launch(GRID, BLOCK, [&] { mgsd_apool_h(t1.data(), t2.data(), n2, h, oh, ow); });
        mgsd_launch(GRID, BLOCK, [&] { mgsd_apool_d(t2.data(), y.data(), n3, d, h, w, od, oh, ow); });
        write(io[1], y);
    } else if (k == "apool_bwd") {
        need(2);
        auto dy = read<float>(io[0], p * od * oh * ow);
        std::vector<float> t2(p * d * oh * ow), t1(p * d * h * ow), dx(in);
        const long long n2 = t2.size(), n1 = t1.size();
        mgsd_launch(GRID, BLOCK, [&] { mgsd_apool_bwd_d(dy.data(), t2.data(), n2, d, h, w, od, oh, ow); });
        mgsd_launch(GRID, BLOCK, [&] { mgsd_apool_bwd_h(t2.data(), t1.data(), n1, h, oh, ow); });
        mgsd_launch(GRID, BLOCK, [&] { mgsd_apool_bwd_w(t1.data(), dx.data(), in, w, ow); });
        write(io[1], dx);
    } else if (k == "conv_bias_add" || k == "conv_bias_residual_add" || k == "conv_residual_add") {
        // y (N, C, S) with N = p, C = d, S = h.
        const bool bias = k != "conv_residual_add", res = k != "conv_bias_add";
        need(1 + bias + res + 1);
        auto y = read<float>(io[0], in);
        auto b = bias ? read<float>(io[1], d) : std::vector<float>();
        auto r = res ? read<float>(io[1 + bias], in) : std::vector<float>();
        mgsd_launch(GRID, BLOCK, [&] {
            if (bias && res) mgsd_conv_bias_residual_add(y.data(), b.data(), r.data(), in, h, d);
            else if (bias) mgsd_conv_bias_add(y.data(), b.data(), in, h, d);
            else mgsd_conv_residual_add(y.data(), r.data(), in);
        });
        write(io[1 + bias + res], y);
    } else if (k == "f32_to_bf16") {
        // (N, C, S) = (p, d, h).
        need(2);
        const long long total = p * d * h;
        auto x = read<float>(io[0], total);
        std::vector<__nv_bfloat16> y(total, __nv_bfloat16{0xffff});
        mgsd_launch(GRID, BLOCK, [&] { mgsd_f32_to_bf16(x.data(), y.data(), p, h, d); });
        write(io[1], y);
    } else if (k.rfind("bf16_to_f32", 0) == 0) {
        const bool bias = k.find("bias") != std::string::npos;
        const bool res = k.find("residual") != std::string::npos;
        need(1 + bias + res + 1);
        const long long total = p * d * h;
        auto y = read<__nv_bfloat16>(io[0], total);
        auto b = bias ? read<float>(io[1], d) : std::vector<float>();
        auto r = res ? read<float>(io[1 + bias], total) : std::vector<float>();
        std::vector<float> out(total, -1.0f);
        mgsd_launch(GRID, BLOCK, [&] {
            mgsd_bf16_to_f32(y.data(), bias ? b.data() : nullptr, res ? r.data() : nullptr,
                             out.data(), p, h, d);
        });
        write(io[1 + bias + res], out);
    } else {
        fail("unknown kernel " + k);
    }
    return 0;
}

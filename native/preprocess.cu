// CUDA version of fusionedge.sdk.preprocess.preprocess_frame: uint8 RGB / BGR (H, W, 3) or NV12
// (H * 3 / 2, W) -> resize -> (x / 255 - mean) / std -> float32 (3, H', W') RGB, one thread per
// output pixel.
//
// It uses the same separable weights as the CPU path (native/preprocess.cpp) and the NumPy
// reference: per axis a start index and K taps per output index (area coverage when the axis
// shrinks, bilinear when it grows), computed once per size pair on the host
// (sdk/preprocess.py: _resize_taps) and copied to the device by the caller. Output pixel (y, x)
// is sum_i sum_j wy[y][i] * wx[x][j] * rgb(ys[y] + i, xs[x] + j); NV12 is read as BT.601 limited
// range with nearest 2x2 chroma, clamped to [0, 255], per input pixel, as the reference does.
//
// Built by CMake only where a CUDA compiler is found (see CMakeLists.txt); it is a separate
// library with a C interface, so the Python extension and `pip install .` do not depend on CUDA.
#include <cuda_runtime.h>

#include <cstdint>

namespace {

constexpr float kY = 255.0f / 219.0f;
constexpr float kRV = 1.402f * 255.0f / 224.0f;
constexpr float kGU = -0.114f * 1.772f / 0.587f * 255.0f / 224.0f;
constexpr float kGV = -0.299f * 1.402f / 0.587f * 255.0f / 224.0f;
constexpr float kBU = 1.772f * 255.0f / 224.0f;

struct Norm {
    float a[3];  // 1 / (255 std)
    float b[3];  // -mean / std
};

__device__ inline float clamp255(float v) { return fminf(255.0f, fmaxf(0.0f, v)); }

// Input pixel (r, c) as RGB on [0, 255].
__device__ inline void load_rgb(const uint8_t *__restrict__ src, int h, int w, int color, int r, int c,
                                float &R, float &G, float &B) {
    if (color == 2) {  // NV12
        const float y = kY * (static_cast<float>(src[r * w + c]) - 16.0f);
        const uint8_t *uv = src + (h + r / 2) * w + (c & ~1);
        const float u = static_cast<float>(uv[0]) - 128.0f;
        const float v = static_cast<float>(uv[1]) - 128.0f;
        R = clamp255(y + kRV * v);
        G = clamp255(y + kGU * u + kGV * v);
        B = clamp255(y + kBU * u);
    } else {
        const uint8_t *p = src + (static_cast<size_t>(r) * w + c) * 3;
        const float c0 = p[0], c1 = p[1], c2 = p[2];
        R = color == 1 ? c2 : c0;
        G = c1;
        B = color == 1 ? c0 : c2;
    }
}

__global__ void preprocess_frame_kernel(const uint8_t *__restrict__ src, int h, int w, int color,
                                        const int32_t *__restrict__ ys, const float *__restrict__ wy, int ky,
                                        const int32_t *__restrict__ xs, const float *__restrict__ wx, int kx,
                                        Norm norm, float *__restrict__ dst, int oh, int ow) {
    const int ox = blockIdx.x * blockDim.x + threadIdx.x;
    const int oy = blockIdx.y * blockDim.y + threadIdx.y;
    if (ox >= ow || oy >= oh) return;
    const int r0 = ys[oy], c0 = xs[ox];
    const float *wr = wy + oy * ky;
    const float *wc = wx + ox * kx;
    float sr = 0.0f, sg = 0.0f, sb = 0.0f;
    for (int i = 0; i < ky; ++i) {
        const float wi = wr[i];
        if (wi == 0.0f) continue;
        float rr = 0.0f, rg = 0.0f, rb = 0.0f;
        for (int j = 0; j < kx; ++j) {
            const float wj = wc[j];
            if (wj == 0.0f) continue;
            float R, G, B;
            load_rgb(src, h, w, color, r0 + i, c0 + j, R, G, B);
            rr += wj * R;
            rg += wj * G;
            rb += wj * B;
        }
        sr += wi * rr;
        sg += wi * rg;
        sb += wi * rb;
    }
    const size_t plane = static_cast<size_t>(oh) * ow;
    const size_t o = static_cast<size_t>(oy) * ow + ox;
    dst[o] = sr * norm.a[0] + norm.b[0];
    dst[plane + o] = sg * norm.a[1] + norm.b[1];
    dst[2 * plane + o] = sb * norm.a[2] + norm.b[2];
}

}  // namespace

extern "C" {

// Launch the fused preprocessing on `stream`. All pointers are device pointers: src (the frame,
// (h, w, 3) for color 0 = RGB / 1 = BGR, (h * 3 / 2, w) for 2 = NV12, h and w even), ys/wy and
// xs/wx (the per-axis starts (n_out,) and taps (n_out, k) of sdk.preprocess._resize_taps), dst
// ((3, oh, ow) float32). mean/std are host arrays of three values, RGB order. Returns the launch's
// cudaError_t as an int (0 = cudaSuccess; 1 = cudaErrorInvalidValue for bad arguments).
__attribute__((visibility("default"))) int fusionedge_preprocess_frame_cuda(
                                     const uint8_t *src, int h, int w, int color, const int32_t *ys,
                                     const float *wy, int ky, const int32_t *xs, const float *wx, int kx,
                                     const double *mean, const double *stdev, float *dst, int oh, int ow,
                                     cudaStream_t stream) {
    if (!src || !ys || !wy || !xs || !wx || !mean || !stdev || !dst || h <= 0 || w <= 0 || oh <= 0 ||
        ow <= 0 || ky <= 0 || kx <= 0 || color < 0 || color > 2 || (color == 2 && (h % 2 || w % 2)))
        return static_cast<int>(cudaErrorInvalidValue);
    Norm norm;
    for (int k = 0; k < 3; ++k) {
        if (!(stdev[k] > 0.0)) return static_cast<int>(cudaErrorInvalidValue);
        norm.a[k] = static_cast<float>(1.0 / (255.0 * stdev[k]));
        norm.b[k] = static_cast<float>(-mean[k] / stdev[k]);
    }
    const dim3 block(32, 8);
    const dim3 grid((ow + block.x - 1) / block.x, (oh + block.y - 1) / block.y);
    preprocess_frame_kernel<<<grid, block, 0, stream>>>(src, h, w, color, ys, wy, ky, xs, wx, kx, norm, dst,
                                                       oh, ow);
    return static_cast<int>(cudaGetLastError());
}

}  // extern "C"

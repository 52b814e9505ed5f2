// Native preprocessing for fusionedge.sdk.
//
// 1. normalize_hwc_to_chw: uint8 HWC (RGB or BGR) -> float32 CHW, (x / 255 - mean[c]) / std[c],
//    bit-for-bit the NumPy reference fusionedge.sdk.preprocess.normalize_image_reference (a 3 x 256
//    lookup table computed in double precision).
// 2. preprocess_frame: the fused frame preprocessing of fusionedge.sdk.preprocess.preprocess_frame —
//    uint8 RGB / BGR (H, W, 3) or NV12 (H * 3 / 2, W) -> resize to the model size -> normalize ->
//    float32 (3, H', W') RGB, in one pass over the rows the output needs. The resize is separable:
//    output pixel (y, x) = sum_i sum_j wy[y][i] * wx[x][j] * in[ys[y] + i][xs[x] + j], with the
//    per-axis weight tables (start index + K taps per output index) computed once per size pair by
//    Python (sdk/preprocess.py: area coverage when an axis shrinks, bilinear when it grows) and
//    passed in, so this code and the NumPy reference use the same weights. Per output row the
//    covered input rows are accumulated into a row buffer (the equal-weight rows, i.e. the fully
//    covered rows of an area resize, as exact integer sums scaled once; the others in float), then
//    each output pixel sums its horizontal taps from that buffer and is normalized. NV12 (BT.601
//    limited range, chroma nearest 2x2, clamped) is turned into RGB on the fly, row by row.
//    Within 1e-5 of the NumPy reference (float32 arithmetic vs float64).
//
// Both write into the caller's buffer and release the GIL while they work. The only memory they
// take is thread-local row buffers that grow to the widest frame seen and are then reused: no
// allocation per frame.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/array.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace nb = nanobind;

using ImageIn = nb::ndarray<const uint8_t, nb::ndim<3>, nb::c_contig, nb::device::cpu>;
using AnyImageIn = nb::ndarray<const uint8_t, nb::c_contig, nb::device::cpu>;
using TensorOut = nb::ndarray<float, nb::ndim<3>, nb::c_contig, nb::device::cpu>;
using StartsIn = nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using TapsIn = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

static void check_mean_std(const std::array<double, 3> &mean, const std::array<double, 3> &stdev) {
    for (int k = 0; k < 3; ++k) {
        if (!(stdev[k] > 0.0) || !std::isfinite(stdev[k]))
            throw std::invalid_argument("std must be finite and > 0");
        if (!std::isfinite(mean[k])) throw std::invalid_argument("mean must be finite");
    }
}

static void normalize_hwc_to_chw(ImageIn image, TensorOut out, std::array<double, 3> mean,
                                 std::array<double, 3> stdev, bool bgr_input) {
    const size_t h = image.shape(0), w = image.shape(1), c = image.shape(2);
    if (c != 3) throw std::invalid_argument("image must have 3 channels (H, W, 3)");
    if (out.shape(0) != 3 || out.shape(1) != h || out.shape(2) != w)
        throw std::invalid_argument("out must have shape (3, H, W) matching the image");
    check_mean_std(mean, stdev);
    const uint8_t *src = image.data();
    float *dst = out.data();
    const size_t plane = h * w;
    {
        nb::gil_scoped_release release;
        // lut[k][v]: output channel k (RGB order) for input value v, the same float64 expression
        // as the NumPy reference, rounded to float32 once.
        alignas(64) float lut[3][256];
        for (int k = 0; k < 3; ++k)
            for (int v = 0; v < 256; ++v)
                lut[k][v] = static_cast<float>((static_cast<double>(v) / 255.0 - mean[k]) / stdev[k]);
        // Output channel k reads input channel k, or 2 - k for BGR input.
        const int i0 = bgr_input ? 2 : 0, i2 = bgr_input ? 0 : 2;
        float *__restrict d0 = dst;
        float *__restrict d1 = dst + plane;
        float *__restrict d2 = dst + 2 * plane;
        const float *l0 = lut[0], *l1 = lut[1], *l2 = lut[2];
        for (size_t p = 0; p < plane; ++p) {
            const uint8_t *px = src + 3 * p;
            d0[p] = l0[px[i0]];
            d1[p] = l1[px[1]];
            d2[p] = l2[px[i2]];
        }
    }
}

enum Color : int { RGB = 0, BGR = 1, NV12 = 2 };

// NV12 -> RGB floats (BT.601 limited range, clamped to [0, 255]); the same formula as
// sdk.preprocess.nv12_to_rgb_reference. Planar rows so that the loops vectorize: the chroma terms
// of one UV row (shared by two Y rows, each U, V pair by two pixels) are computed once into
// cr/cg/cb, then each Y row adds its luma.
constexpr float kY = 255.0f / 219.0f;
constexpr float kRV = 1.402f * 255.0f / 224.0f;
constexpr float kGU = -0.114f * 1.772f / 0.587f * 255.0f / 224.0f;
constexpr float kGV = -0.299f * 1.402f / 0.587f * 255.0f / 224.0f;
constexpr float kBU = 1.772f * 255.0f / 224.0f;

static inline float clamp255(float v) { return v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v); }

static void nv12_chroma_row(const uint8_t *__restrict uv_row, size_t w, float *__restrict cr,
                            float *__restrict cg, float *__restrict cb) {
    for (size_t k = 0; k < w / 2; ++k) {
        const float u = static_cast<float>(uv_row[2 * k]) - 128.0f;
        const float v = static_cast<float>(uv_row[2 * k + 1]) - 128.0f;
        cr[2 * k] = cr[2 * k + 1] = kRV * v;
        cg[2 * k] = cg[2 * k + 1] = kGU * u + kGV * v;
        cb[2 * k] = cb[2 * k + 1] = kBU * u;
    }
}

// acc{R,G,B}[x] += wgt * clamp(luma(y_row[x]) + c{r,g,b}[x])
static void nv12_accumulate_row(const uint8_t *__restrict y_row, size_t w, const float *__restrict cr,
                                const float *__restrict cg, const float *__restrict cb, float wgt,
                                float *__restrict ar, float *__restrict ag, float *__restrict ab) {
    for (size_t x = 0; x < w; ++x) {
        const float yy = kY * (static_cast<float>(y_row[x]) - 16.0f);
        ar[x] += wgt * clamp255(yy + cr[x]);
        ag[x] += wgt * clamp255(yy + cg[x]);
        ab[x] += wgt * clamp255(yy + cb[x]);
    }
}

static void check_axis(const StartsIn &starts, const TapsIn &taps, size_t n_out, size_t n_in,
                       const char *what) {
    if (starts.shape(0) != n_out || taps.shape(0) != n_out || taps.shape(1) < 1)
        throw std::invalid_argument(std::string(what) + " weights do not match the output size");
    const size_t k = taps.shape(1);
    if (k > n_in) throw std::invalid_argument(std::string(what) + " weights have more taps than input pixels");
    const int32_t *s = starts.data();
    for (size_t i = 0; i < n_out; ++i)
        if (s[i] < 0 || static_cast<size_t>(s[i]) + k > n_in)
            throw std::invalid_argument(std::string(what) + " weights reach outside the input");
}

// The pixel loop of preprocess_frame (see the top of the file). On x86-64 GCC/Clang also compile
// an AVX2 + FMA clone and pick it at load time when the CPU has it.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FE_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define FE_CLONES
#endif

FE_CLONES
static void resize_normalize(const uint8_t *src, size_t h, size_t w, int color, const int32_t *y0s,
                             const float *wyd, size_t ky, const int32_t *x0s, const float *wxd, size_t kx,
                             const float *a, const float *b, float *dst, size_t oh, size_t ow,
                             float *__restrict acc, float *__restrict rgb, uint16_t *__restrict isum) {
    const size_t plane = oh * ow;
    // Output channel k (RGB) reads accumulated channel ck.
    const int c0 = color == BGR ? 2 : 0, c2 = color == BGR ? 0 : 2;
    const size_t row_len = 3 * w;
    size_t chroma_row = static_cast<size_t>(-1);  // the UV row whose terms are in rgb (NV12)
    // acc holds one resampled row: interleaved (x, c) for RGB/BGR, planar (c, x) for NV12
    for (size_t oy = 0; oy < oh; ++oy) {
        // vertical taps -> acc (interleaved, input channel order)
        const float *wrow = wyd + oy * ky;
        const size_t r0 = static_cast<size_t>(y0s[oy]);
        if (color == NV12) {
            std::fill(acc, acc + row_len, 0.0f);
            for (size_t i = 0; i < ky; ++i) {
                const float wgt = wrow[i];
                if (wgt == 0.0f) continue;
                const size_t r = r0 + i;
                if (r / 2 != chroma_row) {
                    chroma_row = r / 2;
                    nv12_chroma_row(src + (h + chroma_row) * w, w, rgb, rgb + w, rgb + 2 * w);
                }
                nv12_accumulate_row(src + r * w, w, rgb, rgb + w, rgb + 2 * w, wgt, acc, acc + w, acc + 2 * w);
            }
        } else {
            // The rows with the largest weight (all the fully covered rows of an area resize) are
            // summed as integers (exact) and scaled once; the rest are added with their weights.
            const float wmax = *std::max_element(wrow, wrow + ky);
            size_t in_sum = 0;
            bool acc_set = false;
            for (size_t i = 0; i <= ky; ++i) {
                const bool take = i < ky && wrow[i] == wmax;
                if (take) {
                    const uint8_t *__restrict in = src + (r0 + i) * row_len;
                    if (in_sum == 0)
                        for (size_t j = 0; j < row_len; ++j) isum[j] = in[j];
                    else
                        for (size_t j = 0; j < row_len; ++j) isum[j] = static_cast<uint16_t>(isum[j] + in[j]);
                    ++in_sum;
                }
                // flush before a uint16 could overflow (257 * 255 > 65535), and at the end
                if (in_sum > 0 && (in_sum == 256 || i == ky)) {
                    if (acc_set)
                        for (size_t j = 0; j < row_len; ++j) acc[j] += wmax * static_cast<float>(isum[j]);
                    else
                        for (size_t j = 0; j < row_len; ++j) acc[j] = wmax * static_cast<float>(isum[j]);
                    acc_set = true;
                    in_sum = 0;
                }
            }
            for (size_t i = 0; i < ky; ++i) {
                const float wgt = wrow[i];
                if (wgt == wmax || wgt == 0.0f) continue;
                const uint8_t *__restrict in = src + (r0 + i) * row_len;
                for (size_t j = 0; j < row_len; ++j) acc[j] += wgt * static_cast<float>(in[j]);
            }
        }
        // horizontal taps -> normalized CHW
        float *__restrict d0 = dst + oy * ow;
        float *__restrict d1 = d0 + plane;
        float *__restrict d2 = d1 + plane;
        for (size_t ox = 0; ox < ow; ++ox) {
            const float *wcol = wxd + ox * kx;
            float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f;
            if (color == NV12) {  // planar
                const float *p = acc + static_cast<size_t>(x0s[ox]);
                for (size_t j = 0; j < kx; ++j) {
                    const float wgt = wcol[j];
                    s0 += wgt * p[j];
                    s1 += wgt * p[w + j];
                    s2 += wgt * p[2 * w + j];
                }
            } else {  // interleaved, input channel order
                const float *p = acc + 3 * static_cast<size_t>(x0s[ox]);
                for (size_t j = 0; j < kx; ++j, p += 3) {
                    const float wgt = wcol[j];
                    s0 += wgt * p[c0];
                    s1 += wgt * p[1];
                    s2 += wgt * p[c2];
                }
            }
            d0[ox] = s0 * a[0] + b[0];
            d1[ox] = s1 * a[1] + b[1];
            d2[ox] = s2 * a[2] + b[2];
        }
    }
}

static void preprocess_frame(AnyImageIn image, TensorOut out, StartsIn ys, TapsIn wy, StartsIn xs,
                             TapsIn wx, std::array<double, 3> mean, std::array<double, 3> stdev,
                             int color) {
    size_t h, w;
    if (color == RGB || color == BGR) {
        if (image.ndim() != 3 || image.shape(2) != 3)
            throw std::invalid_argument("an RGB/BGR image must have shape (H, W, 3)");
        h = image.shape(0);
        w = image.shape(1);
    } else if (color == NV12) {
        if (image.ndim() != 2 || image.shape(0) % 3 != 0 || image.shape(1) % 2 != 0)
            throw std::invalid_argument("an NV12 image must have shape (H * 3 / 2, W), H and W even");
        h = image.shape(0) / 3 * 2;  // even by construction
        w = image.shape(1);
    } else {
        throw std::invalid_argument("color must be 0 (rgb), 1 (bgr) or 2 (nv12)");
    }
    if (h == 0 || w == 0) throw std::invalid_argument("image is empty");
    if (out.shape(0) != 3) throw std::invalid_argument("out must have shape (3, H, W)");
    const size_t oh = out.shape(1), ow = out.shape(2);
    check_axis(ys, wy, oh, h, "row");
    check_axis(xs, wx, ow, w, "column");
    check_mean_std(mean, stdev);

    const uint8_t *src = image.data();
    const int32_t *y0s = ys.data(), *x0s = xs.data();
    const float *wyd = wy.data(), *wxd = wx.data();
    const size_t ky = wy.shape(1), kx = wx.shape(1);
    float *dst = out.data();
    // (v / 255 - mean) / std = v * a + b
    float a[3], b[3];
    for (int k = 0; k < 3; ++k) {
        a[k] = static_cast<float>(1.0 / (255.0 * stdev[k]));
        b[k] = static_cast<float>(-mean[k] / stdev[k]);
    }

    nb::gil_scoped_release release;
    thread_local std::vector<float> acc_buf, rgb_buf;
    thread_local std::vector<uint16_t> sum_buf;
    if (acc_buf.size() < 3 * w) acc_buf.resize(3 * w);
    if (color == NV12 && rgb_buf.size() < 3 * w) rgb_buf.resize(3 * w);
    if (color != NV12 && sum_buf.size() < 3 * w) sum_buf.resize(3 * w);
    resize_normalize(src, h, w, color, y0s, wyd, ky, x0s, wxd, kx, a, b, dst, oh, ow, acc_buf.data(),
                     rgb_buf.data(), sum_buf.data());
}

NB_MODULE(_native, m) {
    m.doc() = "FusionEdge native preprocessing";
    m.def("normalize_hwc_to_chw", &normalize_hwc_to_chw, nb::arg("image"), nb::arg("out"),
          nb::arg("mean"), nb::arg("std"), nb::arg("bgr_input") = false,
          "Normalize a uint8 (H, W, 3) image into a preallocated float32 (3, H, W) buffer: "
          "(x/255 - mean) / std per channel, RGB output order; bgr_input swaps the input channels. "
          "Bit-exact with the float64 NumPy reference rounded to float32. Releases the GIL.");
    m.def("preprocess_frame", &preprocess_frame, nb::arg("image"), nb::arg("out"), nb::arg("row_starts"),
          nb::arg("row_taps"), nb::arg("col_starts"), nb::arg("col_taps"), nb::arg("mean"),
          nb::arg("std"), nb::arg("color"),
          "Resize (separable weights: starts (n_out,) int32 + taps (n_out, K) float32 per axis) and "
          "normalize a uint8 RGB/BGR (H, W, 3) or NV12 (H*3/2, W) frame into a preallocated float32 "
          "(3, H', W') RGB buffer in one pass; color: 0 rgb, 1 bgr, 2 nv12. Releases the GIL.");
}

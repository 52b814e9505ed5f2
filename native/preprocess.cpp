// Fused image normalization for fusionedge.sdk: uint8 HWC (RGB or BGR) -> float32 CHW,
// (x / 255 - mean[c]) / std[c], in one pass, written into a caller-owned buffer.
//
// A uint8 channel has only 256 values, so the arithmetic is done once per value, in double
// precision, into a 3 x 256 lookup table; the pixel loop is then a table read and a store per
// channel. The result is bit-for-bit the NumPy reference
// fusionedge.sdk.preprocess.normalize_image_reference ((x/255 - mean)/std in float64, rounded to
// float32 once), which the tests hold this function to. The GIL is released while the pixels are
// processed, so several camera threads can normalize at once.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/array.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <stdexcept>

namespace nb = nanobind;

using ImageIn = nb::ndarray<const uint8_t, nb::ndim<3>, nb::c_contig, nb::device::cpu>;
using TensorOut = nb::ndarray<float, nb::ndim<3>, nb::c_contig, nb::device::cpu>;

static void normalize_hwc_to_chw(ImageIn image, TensorOut out, std::array<double, 3> mean,
                                 std::array<double, 3> stdev, bool bgr_input) {
    const size_t h = image.shape(0), w = image.shape(1), c = image.shape(2);
    if (c != 3) throw std::invalid_argument("image must have 3 channels (H, W, 3)");
    if (out.shape(0) != 3 || out.shape(1) != h || out.shape(2) != w)
        throw std::invalid_argument("out must have shape (3, H, W) matching the image");
    for (int k = 0; k < 3; ++k) {
        if (!(stdev[k] > 0.0) || !std::isfinite(stdev[k]))
            throw std::invalid_argument("std must be finite and > 0");
        if (!std::isfinite(mean[k])) throw std::invalid_argument("mean must be finite");
    }
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

NB_MODULE(_native, m) {
    m.doc() = "FusionEdge native preprocessing";
    m.def("normalize_hwc_to_chw", &normalize_hwc_to_chw, nb::arg("image"), nb::arg("out"),
          nb::arg("mean"), nb::arg("std"), nb::arg("bgr_input") = false,
          "Normalize a uint8 (H, W, 3) image into a preallocated float32 (3, H, W) buffer: "
          "(x/255 - mean) / std per channel, RGB output order; bgr_input swaps the input channels. "
          "Bit-exact with the float64 NumPy reference rounded to float32. Releases the GIL.");
}

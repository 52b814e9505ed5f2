// Fused image normalization for fusionedge.sdk: uint8 HWC (RGB or BGR) -> float32 CHW,
// (x / 255 - mean[c]) / std[c], in one pass, written into a caller-owned buffer.
//
// The NumPy reference is fusionedge.sdk.preprocess.normalize_image_reference; the tests hold this
// function to it. The GIL is released while the pixels are processed.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <array>
#include <cstdint>
#include <stdexcept>

namespace nb = nanobind;

using ImageIn = nb::ndarray<const uint8_t, nb::ndim<3>, nb::c_contig, nb::device::cpu>;
using TensorOut = nb::ndarray<float, nb::ndim<3>, nb::c_contig, nb::device::cpu>;

static void normalize_hwc_to_chw(ImageIn image, TensorOut out, std::array<float, 3> mean,
                                 std::array<float, 3> stdev, bool bgr_input) {
    const size_t h = image.shape(0), w = image.shape(1), c = image.shape(2);
    if (c != 3) throw std::invalid_argument("image must have 3 channels (H, W, 3)");
    if (out.shape(0) != 3 || out.shape(1) != h || out.shape(2) != w)
        throw std::invalid_argument("out must have shape (3, H, W) matching the image");
    for (float s : stdev)
        if (!(s > 0.0f)) throw std::invalid_argument("std must be > 0");

    const uint8_t *src = image.data();
    float *dst = out.data();
    // Per channel: out = x * scale + bias, with scale = 1/(255*std), bias = -mean/std.
    float scale[3], bias[3];
    for (int k = 0; k < 3; ++k) {
        // Output channel k (RGB order) reads input channel k, or 2-k for BGR input.
        scale[k] = 1.0f / (255.0f * stdev[k]);
        bias[k] = -mean[k] / stdev[k];
    }
    const size_t plane = h * w;
    {
        nb::gil_scoped_release release;
        float *d0 = dst, *d1 = dst + plane, *d2 = dst + 2 * plane;
        const int i0 = bgr_input ? 2 : 0, i2 = bgr_input ? 0 : 2;
        for (size_t p = 0; p < plane; ++p) {
            const uint8_t *px = src + 3 * p;
            d0[p] = static_cast<float>(px[i0]) * scale[0] + bias[0];
            d1[p] = static_cast<float>(px[1]) * scale[1] + bias[1];
            d2[p] = static_cast<float>(px[i2]) * scale[2] + bias[2];
        }
    }
}

NB_MODULE(_native, m) {
    m.doc() = "FusionEdge native preprocessing";
    m.def("normalize_hwc_to_chw", &normalize_hwc_to_chw, nb::arg("image"), nb::arg("out"),
          nb::arg("mean"), nb::arg("std"), nb::arg("bgr_input") = false,
          "Normalize a uint8 (H, W, 3) image into a preallocated float32 (3, H, W) buffer: "
          "(x/255 - mean) / std per channel, RGB output order; bgr_input swaps the input channels.");
}

"""soxr against the NumPy reference resampler: the same contract, the same numbers within 1e-3.

Both are real: soxr (``fusionedge[media]``) and :func:`resample_window_reference`. The signals are
sine sweeps faded in and out (a hard cut into silence excites each filter's own transition band, where
two different filters may rightly differ).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("soxr", reason="needs fusionedge[media] (soxr)")

from fusionedge.sdk import resample as R
from fusionedge.sdk.preprocess import preprocess_audio, resample_context
from fusionedge.sdk.spec import InputGeometry

RATES = [(44100, 16000), (48000, 16000), (22050, 16000), (8000, 16000), (96000, 16000), (16000, 8000),
         (11025, 16001)]  # the last: an odd ratio (cached phase tables do not apply)


def _sweep(rate: int, seconds: float, f0: float, f1: float) -> np.ndarray:
    """A linear sweep from f0 to f1 Hz, amplitude 0.8, with 50 ms raised-cosine fades."""
    t = np.arange(int(rate * seconds)) / rate
    x = 0.8 * np.sin(2 * np.pi * (f0 * t + 0.5 * (f1 - f0) / seconds * t * t))
    fade = int(0.05 * rate)
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0, np.pi, fade))
    x[:fade] *= ramp
    x[-fade:] *= ramp[::-1]
    return x


@pytest.mark.parametrize("sr_in, sr_out", RATES)
def test_soxr_matches_the_reference_on_sine_sweeps(sr_in: int, sr_out: int) -> None:
    x = _sweep(sr_in, 1.5, 40.0, 0.8 * min(sr_in, sr_out) / 2)
    n = round(len(x) * sr_out / sr_in)
    worst = 0.0
    for s0, count in [(0, n), (len(x) // 3, sr_out // 2), (len(x) - sr_in // 5, sr_out // 2)]:
        ref = R.resample_window_reference(x, sr_in, sr_out, s0, count)
        got = R.resample_window_soxr(x, sr_in, sr_out, s0, count)
        assert got.shape == ref.shape
        inside = min(count, -(-(len(x) - s0) * sr_out // sr_in))  # outputs before the signal's end
        assert not got[inside:].any() and not ref[inside:].any()  # past the end: exactly 0 in both
        worst = max(worst, float(np.abs(got - ref).max()))
    assert worst < 1e-3, f"{sr_in} -> {sr_out} Hz: soxr and the reference differ by {worst:.2e}"


@pytest.mark.parametrize("sr_in", [44100, 48000, 8000])
def test_a_window_read_with_its_context_resamples_as_the_whole_signal(sr_in: int) -> None:
    g = InputGeometry()
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (sr_in * 4, 2)).astype(np.float32)
    ctx = resample_context(sr_in, g.sample_rate)
    for start in (0.0, 0.013, 1.7, 3.2):
        s0 = round(start * sr_in)
        lo = max(0, s0 - ctx)
        window = x[lo: s0 + int(np.ceil(g.clip_seconds * sr_in)) + ctx]
        np.testing.assert_array_equal(
            preprocess_audio(window, sr_in, g, start_seconds=(s0 - lo) / sr_in),
            preprocess_audio(x, sr_in, g, start_seconds=start))


def test_the_resampler_in_use_is_soxr_unless_the_environment_asks_for_the_reference() -> None:
    assert R.RESAMPLER == ("numpy" if os.environ.get("FUSIONEDGE_RESAMPLER") == "numpy" else "soxr")
    code = "from fusionedge.sdk import resample as R; print(R.RESAMPLER, R.filter_half_length(441, 160))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                         env={**os.environ, "FUSIONEDGE_RESAMPLER": "numpy"})
    assert out.stdout.split() == ["numpy", str(R._filter_shape(441, 160)[1])]


@pytest.mark.parametrize("impl", ["reference", "soxr"])
def test_both_filters_are_flat_to_7_khz_and_reject_what_would_alias(impl: str) -> None:
    """48 kHz -> 16 kHz: the reference's measured response (also what CI measures of soxr)."""
    fn = R.resample_window_reference if impl == "reference" else R.resample_window_soxr
    t = np.arange(2 * 48000) / 48000

    def gain_db(freq: float) -> float:
        y = fn(np.sin(2 * np.pi * freq * t), 48000, 16000, 0, 32000)[2000:-2000]
        return 20 * np.log10(np.sqrt(2 * np.mean(y**2)) + 1e-15)

    for freq in (100.0, 1000.0, 4000.0, 7000.0):
        assert abs(gain_db(freq)) < 0.01, f"{impl}: {freq:g} Hz"
    for freq in (8500.0, 11000.0, 20000.0):  # would fold back into the band
        assert gain_db(freq) < -85, f"{impl}: {freq:g} Hz"

"""Recordings as one container: the sound of an mp4 (AAC) read with its pictures, by their timestamps.

The media is made here with ffmpeg (AAC, Opus, FLAC, a variable-frame-rate mp4); the readers are the
real PyAV and soundfile, the model is the exported toy bundle on ONNX Runtime, and the CLI runs in
process. Without PyAV/soundfile installed (``fusionedge[media]``) the readers' tests skip and one
test checks, in a Python that cannot import them, that a FLAC or mp4-audio request names the extra.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from _toy_model import TOY_GEOMETRY, shared_toy_bundle
from fusionedge.cli.main import main
from fusionedge.sdk.errors import MediaError

av = pytest.importorskip("av", reason="needs fusionedge[media] (PyAV)")
pytest.importorskip("soundfile", reason="needs fusionedge[media] (soundfile)")
if shutil.which("ffmpeg") is None:
    pytest.skip("needs ffmpeg on PATH (Debian: apt-get install ffmpeg)", allow_module_level=True)

from fusionedge.sdk.media import (
    embedded_audio,
    open_audio,
    read_audio,
    read_audio_window,
    read_video,
)
from fusionedge.sdk.media_av import ContainerAudio
from fusionedge.sdk.preprocess import preprocess_audio

RATE = 16000
SECONDS = 2.0


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True, timeout=60)


def _write_wav(path: Path, x: np.ndarray, rate: int = RATE) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def _sound(seconds: float = SECONDS, rate: int = RATE, seed: int = 0) -> np.ndarray:
    """Noise and a rising tone: every window of it differs from its neighbours."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    return 0.3 * np.sin(2 * np.pi * (300 + 400 * t) * t) + 0.1 * rng.standard_normal(t.size)


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """clip.mp4 (H.264 + AAC), silent.mp4 (the same pictures, no sound), clip.wav (its decoded sound)."""
    d = tmp_path_factory.mktemp("av")
    src = _write_wav(d / "src.wav", _sound())
    _ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=96x64:rate=16:duration={SECONDS}", "-i", str(src),
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-g", "8", "-c:a", "aac", "-b:a", "96k",
            "-shortest", str(d / "clip.mp4"))
    _ffmpeg("-i", str(d / "clip.mp4"), "-an", "-c:v", "copy", str(d / "silent.mp4"))
    _ffmpeg("-i", str(d / "clip.mp4"), "-vn", "-c:a", "pcm_f32le", str(d / "clip.wav"))
    return {"mp4": d / "clip.mp4", "silent": d / "silent.mp4", "wav": d / "clip.wav", "src": src}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return shared_toy_bundle(tmp_path_factory)


# --------------------------------------------------------------------------------- reading


def test_the_sound_of_an_mp4_is_its_aac_track_on_the_video_time_line(media) -> None:
    assert embedded_audio(media["mp4"]) == media["mp4"]
    assert embedded_audio(media["silent"]) is None
    samples, rate = read_audio(media["mp4"])
    wav, wav_rate = read_audio(media["wav"])
    assert rate == wav_rate == RATE and samples.shape[1] == 1
    n = min(len(samples), len(wav))
    assert n >= SECONDS * RATE * 0.99
    np.testing.assert_allclose(samples[:n], wav[:n], atol=1e-4)  # what ffmpeg itself decodes
    src, _ = read_audio(media["src"])
    lag = int(np.argmax(np.correlate(samples[4000:8000, 0], src[4000 - 50:8000 + 50, 0], "valid"))) - 50
    assert lag == 0  # sample j of the track is sample j of what was recorded


@pytest.mark.parametrize("start", [0.0, 0.61, 1.5])
def test_a_window_of_an_mp4_track_is_read_by_seeking(media, start: float) -> None:
    whole, rate = read_audio(media["mp4"])
    clip = read_audio_window(media["mp4"], start, 0.25, target_rate=8000)
    assert clip.samples.shape[0] < 0.5 * rate  # the window (and context), not the file
    got = preprocess_audio(clip.samples, clip.rate, TOY_GEOMETRY, start_seconds=clip.start_seconds)
    expected = preprocess_audio(whole, rate, TOY_GEOMETRY, start_seconds=start)
    np.testing.assert_allclose(got, expected, atol=1e-4)  # AAC after a seek and its pre-roll


def test_reads_that_continue_each_other_decode_on_without_seeking(media) -> None:
    whole, _ = read_audio(media["mp4"])
    with ContainerAudio(media["mp4"]) as a:
        parts = [a.read(k * 320, 320) for k in range(50)]  # 20 ms chunks, as a replay reads them
    np.testing.assert_array_equal(np.concatenate(parts), whole[: 50 * 320])


def test_video_frames_of_a_container_are_read_from_a_seek(media) -> None:
    whole = read_video(media["mp4"])
    part = read_video(media["mp4"], start_seconds=1.25, max_seconds=0.5)
    assert whole.fps == part.fps == 16.0 and part.frames.shape[0] == 8
    np.testing.assert_array_equal(part.frames, whole.frames[20:28])


@pytest.mark.parametrize("codec, suffix, reader", [("flac", ".flac", "SoundFileAudio"),
                                                    ("libopus", ".ogg", None), ("libopus", ".opus", None),
                                                    ("libmp3lame", ".mp3", "ContainerAudio")])
def test_flac_opus_and_mp3_files_are_read(media, tmp_path, codec: str, suffix: str, reader) -> None:
    out = tmp_path / f"a{suffix}"
    _ffmpeg("-i", str(media["src"]), "-c:a", codec, *(["-ar", "48000"] if codec == "libopus" else []), str(out))
    with open_audio(out) as r:
        if reader is not None:
            assert type(r).__name__ == reader
    samples, rate = read_audio(out)
    src, _ = read_audio(media["src"])
    if codec == "flac":  # lossless: the very samples
        assert rate == RATE
        np.testing.assert_array_equal(samples, src)
        clip = read_audio_window(out, 1.2, 0.25, target_rate=8000)
        np.testing.assert_array_equal(clip.samples, src[clip.first:clip.first + len(clip.samples)])
        return
    # lossy: same duration and loudness, and the tone where it was
    assert abs(len(samples) / rate - SECONDS) < 0.1
    assert np.sqrt(np.mean(samples**2)) == pytest.approx(np.sqrt(np.mean(src**2)), rel=0.15)
    back = preprocess_audio(samples, rate, TOY_GEOMETRY, start_seconds=1.0)
    ref = preprocess_audio(src, RATE, TOY_GEOMETRY, start_seconds=1.0)
    assert np.corrcoef(back, ref)[0, 1] > 0.9


def test_a_truncated_or_corrupt_container_names_the_file(media, tmp_path) -> None:
    data = media["mp4"].read_bytes()
    cut = tmp_path / "cut.mp4"  # ffmpeg writes the index at the end: half a file has none
    cut.write_bytes(data[: len(data) // 2])
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(bytes(np.random.default_rng(1).integers(0, 256, 20000, dtype=np.uint8)))
    for bad in (cut, junk):
        for read in (read_audio, read_video):
            with pytest.raises(MediaError, match=bad.name):
                read(bad)
        with pytest.raises(MediaError, match=bad.name):
            read_audio_window(bad, 0.0, 0.25, target_rate=8000)
    with pytest.raises(MediaError, match=r"silent\.mp4: the file has no audio track"):
        read_audio(media["silent"])


def test_a_recording_that_breaks_off_gives_the_sound_before_the_break(media, tmp_path, caplog) -> None:
    front = tmp_path / "front.mp4"  # the index first, as cameras that stream to disk write it
    _ffmpeg("-i", str(media["mp4"]), "-c", "copy", "-movflags", "+faststart", str(front))
    data = front.read_bytes()
    cut = tmp_path / "front-cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    whole, _ = read_audio(media["mp4"])
    with caplog.at_level("WARNING", logger="fusionedge.sdk.media"):
        part, _ = read_audio(cut)
    assert 0.2 * len(whole) < len(part) < len(whole)
    np.testing.assert_array_equal(part[: len(part) - 2048], whole[: len(part) - 2048])
    assert "front-cut.mp4" in caplog.text and "truncated" in caplog.text


def test_without_the_media_extra_a_flac_or_mp4_sound_names_the_extra(media, tmp_path) -> None:
    flac = tmp_path / "a.flac"
    _ffmpeg("-i", str(media["src"]), str(flac))
    code = f"""
import sys
sys.modules["av"] = sys.modules["soundfile"] = sys.modules["soxr"] = None  # not installed
from fusionedge.sdk.errors import MediaError
from fusionedge.sdk.media import embedded_audio, read_audio, read_video
from fusionedge.sdk.resample import RESAMPLER
for path in {[str(flac), str(media["mp4"])]!r}:
    try:
        read_audio(path)
    except MediaError as e:
        print("error:", e)
print("video:", read_video({str(media["mp4"])!r}).frames.shape[0], "sound:", embedded_audio({str(media["mp4"])!r}))
print("resampler:", RESAMPLER)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 4, out.stdout + out.stderr
    assert lines[0].startswith(f"error: {flac}: reading FLAC audio needs") and "fusionedge[media]" in lines[0]
    assert lines[1].startswith(f"error: {media['mp4']}: reading") and "fusionedge[media]" in lines[1]
    assert lines[2] == "video: 32 sound: None"  # OpenCV still reads the pictures
    assert lines[3] == "resampler: numpy"


def test_a_manifest_row_without_audio_trains_and_evaluates_on_its_videos_sound(media, tmp_path) -> None:
    from fusionedge.sdk.datamanifest import read_manifest
    from fusionedge.sdk.evaluate import load_sample_inputs  # what eval and training's loader decode with

    rows = [{"id": "own", "video": str(media["mp4"]), "event": "none"},
            {"id": "none", "video": str(media["mp4"]), "audio": None, "event": "none"},
            {"id": "silent", "video": str(media["silent"]), "event": "none"},
            {"id": "wav", "video": str(media["silent"]), "audio": str(media["wav"]), "event": "none"}]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    samples = {s.id: s for s in read_manifest(tmp_path)}
    assert samples["own"].audio == media["mp4"]
    assert samples["none"].audio is None and samples["silent"].audio is None  # null: no microphone
    _, own, own_presence, _ = load_sample_inputs(samples["own"], TOY_GEOMETRY)
    _, wav, _, _ = load_sample_inputs(samples["wav"], TOY_GEOMETRY)
    _, _, no_presence, _ = load_sample_inputs(samples["none"], TOY_GEOMETRY)
    assert own_presence.tolist() == [1.0, 1.0] and no_presence.tolist() == [1.0, 0.0]
    np.testing.assert_allclose(own, wav, atol=1e-5)
    assert np.abs(own).max() > 0.05
    from fusionedge.sdk.datacheck import check_dataset

    report = check_dataset(tmp_path, progress=False)  # data check hears the mp4's own sound too
    assert report.failures == [] and report.audio_rates == {str(RATE): 2}


# ----------------------------------------------------------------------------- predict, run


def _predict(capsys, bundle: Path, *args: str) -> dict:
    assert main(["predict", "--bundle", str(bundle), "--start", "1.0", "--json", *map(str, args)]) == 0
    return json.loads(capsys.readouterr().out)


def test_predict_on_an_mp4_alone_uses_its_sound(media, bundle, capsys) -> None:
    own = _predict(capsys, bundle, "--video", media["mp4"])
    separate = _predict(capsys, bundle, "--video", media["silent"], "--audio", media["wav"])
    withheld = _predict(capsys, bundle, "--video", media["silent"])
    assert "audio" not in own["missing"] and withheld["missing"] == ["audio"]
    keys = sorted(own["scores"])
    a, b, c = (np.array([r["scores"][k] for k in keys]) for r in (own, separate, withheld))
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert np.abs(a - c).max() > 10 * np.abs(a - b).max() + 1e-6


def _run(capsys, tmp_path: Path, bundle: Path, name: str, *args: str) -> tuple[dict, list[dict]]:
    events = tmp_path / f"{name}.jsonl"
    assert main(["run", "--bundle", str(bundle), "--fast", "--policy", "offline", "--no-progress", "--json",
                 "--events", str(events), *map(str, args)]) == 0
    summary = json.loads(capsys.readouterr().out)
    rows = [json.loads(line) for line in events.read_text().splitlines()]
    return summary, [r for r in rows if r.get("type") == "result"]


def test_run_on_an_mp4_alone_gives_both_streams_aligned(media, bundle, capsys, tmp_path) -> None:
    own, own_rows = _run(capsys, tmp_path, bundle, "own", "--video", media["mp4"])
    sep, sep_rows = _run(capsys, tmp_path, bundle, "sep", "--video", media["mp4"], "--audio", media["wav"])
    assert set(own["sensors"]) == {"video", "audio"}
    assert own["results"] == sep["results"] == 32  # 2 s at 16 fps
    assert own["results_with_audio"] == sep["results_with_audio"] >= 30  # all but the first window's
    assert [r["t"] for r in own_rows] == [r["t"] for r in sep_rows]
    for r, s in zip(own_rows, sep_rows):  # the same sound at the same times
        assert r["scores"] == pytest.approx(s["scores"], abs=1e-4)


# ------------------------------------------------------------------------ variable frame rate


@pytest.fixture(scope="module")
def vfr(tmp_path_factory) -> tuple[Path, float]:
    """1 s at 8 fps, then 2 s at 24 fps, a white frame at 1.5 s and a click at 1.5 s; AAC sound."""
    d = tmp_path_factory.mktemp("vfr")
    flash = 1.5
    x = np.zeros(int(3.0 * RATE))
    x[int(flash * RATE):int(flash * RATE) + 40] = 0.9  # a 2.5 ms click
    _write_wav(d / "click.wav", x)
    out = d / "vfr.mp4"
    # every third frame of the first second is kept (8 fps), all of the rest (24 fps), with their times
    _ffmpeg("-f", "lavfi", "-i", "color=c=black:size=64x48:rate=24:duration=3", "-i", str(d / "click.wav"),
            "-vf", f"drawbox=c=white:t=fill:enable='between(t,{flash - 0.01},{flash + 0.01})',"
                   "select='gte(t,1)+not(mod(n,3))'",
            "-fps_mode", "vfr", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "128k",
            str(out))
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        times = [float(f.pts * f.time_base) for f in c.decode(s)]
    gaps = np.diff(times)
    assert gaps.max() > 2.5 * gaps.min(), "ffmpeg did not keep the two frame rates"
    return out, flash


def test_a_variable_rate_recording_keeps_pictures_and_sound_within_a_frame(vfr, tmp_path) -> None:
    path, flash = vfr
    clip = read_video(path)
    bright = [k for k, f in enumerate(clip.frames) if f.mean() > 128]
    assert bright, "the white frame is missing"
    seen = bright[0] / clip.fps
    samples, rate = read_audio(path)
    heard = int(np.argmax(np.abs(samples[:, 0]))) / rate
    assert abs(heard - flash) < 0.01
    assert abs(seen - heard) <= 1.0 / clip.fps  # frame k is at k / fps, sample j at j / rate
    naive = (8 + round((flash - 1.0) * 24)) / clip.fps  # the flash's frame index / the average rate
    assert abs(naive - heard) > 3.0 / clip.fps  # what reading by frame count would have done


def test_replay_of_a_variable_rate_recording_stamps_the_flash_at_the_click(vfr) -> None:
    from fusionedge.sdk.streaming.clock import StreamClock
    from fusionedge.sdk.streaming.sources import open_audio_source, open_video_source

    path, _ = vfr
    clock = StreamClock()
    video, audio = open_video_source(str(path), clock, realtime=False), open_audio_source(str(path), clock,
                                                                                          realtime=False)
    video.open(), audio.open()
    try:
        seen = next(f.t for f in iter(video.read, None) if f.image.mean() > 128)
        chunks = list(iter(audio.read, None))
    finally:
        video.close(), audio.close()
    samples = np.concatenate([c.samples for c in chunks])
    heard = (chunks[-1].t_end * audio.rate - len(samples) + int(np.argmax(np.abs(samples)))) / audio.rate
    assert abs(seen - heard) <= 1.0 / 24 + 1e-3

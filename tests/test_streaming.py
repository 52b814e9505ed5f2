"""Streaming runtime: URI parsing, sensor errors, clock/ring alignment (drift, gaps), synchronizer, queues."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from fusionedge.sdk.errors import InputError, MediaError, SensorError
from fusionedge.sdk.preprocess import clip_frame_indices
from fusionedge.sdk.spec import InputGeometry
from fusionedge.sdk.streaming import (
    AudioRing,
    BoundedQueue,
    StreamClock,
    Synchronizer,
    open_audio_source,
    open_video_source,
    parse_uri,
)


@pytest.mark.parametrize("text, kind, scheme, target", [
    ("/dev/video2", "video", "v4l2", "2"),
    ("v4l2://0", "video", "v4l2", "0"),
    ("csi://1", "video", "csi", "1"),
    ("rtsp://cam.local:8554/live", "video", "rtsp", "rtsp://cam.local:8554/live"),
    ("rtsps://cam/x", "video", "rtsp", "rtsps://cam/x"),
    ("gst://videotestsrc ! videoconvert ! appsink", "video", "gst", "videotestsrc ! videoconvert ! appsink"),
    ("clip.mp4", "video", "file", "clip.mp4"),
    ("file:///data/clip.mp4", "video", "file", "/data/clip.mp4"),
    ("mic://default", "audio", "mic", "default"),
    ("alsa://hw:0,0", "audio", "alsa", "hw:0,0"),
    ("sound.wav", "audio", "file", "sound.wav"),
    ("sound.flac", "audio", "file", "sound.flac"),
    ("dashcam.mp4", "audio", "file", "dashcam.mp4"),
])
def test_uri_parsing(text, kind, scheme, target):
    u = parse_uri(text, kind)
    assert (u.scheme, u.target, u.kind) == (scheme, target, kind)
    assert u.live == (scheme not in ("file", "folder"))


def test_a_folder_is_a_folder_source(tmp_path):
    assert parse_uri(str(tmp_path), "video").scheme == "folder"


@pytest.mark.parametrize("text, kind, message", [
    ("", "video", "empty"),
    ("mic://default", "video", "audio scheme"),
    ("csi://0", "audio", "video scheme"),
    ("v4l2://cam", "video", "device number"),
    ("gst://videotestsrc", "video", "appsink"),
    ("http://x/y", "video", "unknown scheme"),
    ("sound.txt", "audio", "WAV, FLAC"),
])
def test_bad_uris_raise_input_error(text, kind, message):
    with pytest.raises(InputError, match=message):
        parse_uri(text, kind)


def test_sensor_errors_name_the_uri_and_what_to_check(tmp_path):
    clock = StreamClock()
    with pytest.raises(SensorError, match=r"'/dev/video97'.*check"):  # a camera may come: retried
        open_video_source("/dev/video97", clock).open()
    # a file that is missing or broken will not mend: a MediaError, which is not retried
    with pytest.raises(MediaError, match=r"missing\.mp4.*no such file"):
        open_video_source(str(tmp_path / "missing.mp4"), clock).open()
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not a wav at all")
    with pytest.raises(MediaError, match="bad.wav"):
        open_audio_source(str(bad), clock).open()
    try:
        import sounddevice  # noqa: F401
    except (ImportError, OSError):
        with pytest.raises(SensorError, match="pip install sounddevice"):
            open_audio_source("mic://default", clock).open()


# ------------------------------------------------------------------------------------- audio ring


def _feed(ring: AudioRing, signal: np.ndarray, rate: int, chunk: int, *, t0: float = 0.0,
          clock_rate: float = 1.0, skip: tuple[int, int] | None = None) -> None:
    """Write ``signal`` in chunks; the sensor clock runs at ``clock_rate``; chunks in ``skip`` are lost."""
    for k, i in enumerate(range(0, signal.size, chunk)):
        if skip is not None and skip[0] <= k < skip[1]:
            continue
        x = signal[i:i + chunk]
        ring.write(x, t0 + (i + x.size) / rate * clock_rate)


def test_ring_window_is_exactly_the_samples_of_that_time():
    rate = 8000
    sig = np.random.default_rng(0).uniform(-1, 1, 3 * rate).astype(np.float32)
    ring = AudioRing(rate, capacity_seconds=4.0)
    _feed(ring, sig, rate, 160)
    out, valid, first = ring.extract(1.25, 1.75)
    assert first == 10000 and valid.all()
    np.testing.assert_array_equal(out, sig[10000:14000])
    assert ring.gaps == 0 and ring.resyncs == 0
    assert ring.newest_time() == pytest.approx(3.0)


def test_ring_follows_clock_drift_without_gaps():
    rate = 8000
    sig = np.arange(20 * rate, dtype=np.float32) / rate  # the sample value is its own true time
    ring = AudioRing(rate, capacity_seconds=30.0, tolerance=0.04)
    _feed(ring, sig, rate, 160, clock_rate=1.001)  # sensor clock 0.1% fast: 20 ms over 20 s
    assert ring.gaps == 0 and ring.resyncs == 0
    out, valid, _ = ring.extract(15.0, 15.1)
    # the servo keeps the mapping within a few ms of the truth (15 ms drift by then, uncorrected)
    assert valid.all() and abs(out[0] * 1.001 - 15.0) < 0.005


def test_ring_fills_a_gap_with_invalid_zeros_and_reports_it():
    rate = 8000
    sig = np.ones(2 * rate, np.float32)
    ring = AudioRing(rate)
    _feed(ring, sig, rate, 160, skip=(25, 50))  # 0.5 s .. 1.0 s lost
    assert ring.gaps == 1 and ring.gap_seconds == pytest.approx(0.5)
    out, valid, _ = ring.extract(0.25, 1.25)
    assert valid.mean() == pytest.approx(0.5)
    assert (out[~valid] == 0).all() and (out[valid] == 1).all()
    assert ring.newest_time() == pytest.approx(2.0)


def test_ring_reanchors_when_the_sensor_clock_jumps_back():
    rate = 8000
    ring = AudioRing(rate)
    _feed(ring, np.zeros(rate, np.float32), rate, 160)
    _feed(ring, np.ones(rate, np.float32), rate, 160, t0=0.5)  # timestamps restart at 0.5 s
    assert ring.resyncs == 1
    assert ring.newest_time() == pytest.approx(1.5)
    out, valid, _ = ring.extract(1.0, 1.5)
    assert valid.all() and (out == 1).all()


def test_ring_wait_until_returns_when_audio_arrives_or_ring_closes():
    ring = AudioRing(8000)
    threading.Timer(0.05, lambda: ring.write(np.zeros(800, np.float32), 0.1)).start()
    assert ring.wait_until(0.1, timeout=2.0)
    threading.Timer(0.05, ring.close).start()
    assert not ring.wait_until(5.0, timeout=2.0)


# ------------------------------------------------------------------------------------ synchronizer

G = InputGeometry(clip_frames=4, height=8, width=8, clip_seconds=1.0, sample_rate=8000)


def _tensor(i: int) -> np.ndarray:
    return np.full((3, 8, 8), float(i), np.float32)


def test_clip_matches_clip_frame_indices_for_regular_frames():
    sync = Synchronizer(G, 30.0)
    for i in range(60):
        sync.add_frame(i / 30, _tensor(i))
    clip = sync.video_clip(59 / 30)
    expected = 30 + clip_frame_indices(30, 30.0, G)  # the window of the last 30 frames
    np.testing.assert_array_equal(clip[:, 0, 0, 0], expected)


def test_clip_covers_dropped_frames_and_the_stream_start_with_neighbours():
    sync = Synchronizer(G, 30.0)
    for i in (0, 1, 2):
        sync.add_frame(i / 30, _tensor(i))
    np.testing.assert_array_equal(sync.video_clip(2 / 30)[:, 0, 0, 0], [0, 0, 0, 2])
    for i in range(3, 60):
        if i not in (49, 50, 51):  # dropped
            sync.add_frame(i / 30, _tensor(i))
    got = sync.video_clip(59 / 30)[:, 0, 0, 0]
    want = 30 + clip_frame_indices(30, 30.0, G)
    assert np.all(np.abs(got - want) <= 2)


def test_audio_window_ends_at_the_frame_instant_and_reports_coverage():
    rate = 8000
    sig = (np.arange(3 * rate, dtype=np.float32) % 1000) / 1000
    ring = AudioRing(rate)
    _feed(ring, sig, rate, 160)
    sync = Synchronizer(G, 30.0)
    win = sync.audio_window(ring, 2.5)
    np.testing.assert_array_equal(win.samples, sig[int(1.5 * rate):int(2.5 * rate)])
    assert win.coverage == 1.0
    assert sync.audio_window(ring, 0.4).coverage == pytest.approx(0.4)  # 0.6 s before the stream
    assert sync.audio_window(None, 1.0).coverage == 0.0


# ------------------------------------------------------------------------------------------ queues


def test_live_queue_drops_the_oldest_and_counts_every_drop():
    q = BoundedQueue(2, "live", threading.Event())
    for i in range(5):
        assert q.put(i)
    assert q.dropped == 3
    assert [q.get(0.1), q.get(0.1), q.get(0.01)] == [3, 4, None]


def test_offline_queue_blocks_the_producer_and_drops_nothing():
    stop = threading.Event()
    q = BoundedQueue(2, "offline", stop)
    got: list[int] = []

    def consume():
        for _ in range(6):
            time.sleep(0.01)
            got.append(q.get(1.0))

    t = threading.Thread(target=consume)
    t.start()
    for i in range(6):
        assert q.put(i)
    t.join(5)
    assert got == list(range(6)) and q.dropped == 0
    q.put(0), q.put(1)
    threading.Timer(0.05, stop.set).start()
    assert q.put(2) is False  # a stop releases a blocked producer


def test_bad_policy_is_refused():
    with pytest.raises(InputError, match="policy"):
        BoundedQueue(2, "sometimes", threading.Event())


def test_folder_and_wav_replay_stamp_media_time(tmp_path):
    import wave

    import cv2

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(3):
        cv2.imwrite(str(frames / f"{i:03d}.png"), np.full((8, 12, 3), 40 * i, np.uint8))
    src = open_video_source(str(frames), StreamClock(), realtime=False)
    src.open()
    got = [src.read() for _ in range(4)]
    src.close()
    assert got[3] is None and [f.t for f in got[:3]] == [0.0, 1 / 30, 2 / 30]
    assert [int(f.image[0, 0, 0]) for f in got[:3]] == [0, 40, 80]

    pcm = (np.random.default_rng(0).uniform(-0.5, 0.5, 1000) * 32767).astype("<i2")
    with wave.open(str(tmp_path / "a.wav"), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(8000)
        f.writeframes(pcm.tobytes())
    mic = open_audio_source(str(tmp_path / "a.wav"), StreamClock(), realtime=False)
    mic.open()
    chunks = []
    while (c := mic.read()) is not None:
        chunks.append(c)
    assert [c.samples.size for c in chunks] == [160] * 6 + [40]
    assert chunks[-1].t_end == pytest.approx(1000 / 8000)
    np.testing.assert_allclose(np.concatenate([c.samples for c in chunks]), pcm / 32768, atol=1e-6)

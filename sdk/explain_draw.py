"""Draw an evidence map for a person: the frames with where the model looked, the audio's spectrogram
with when it listened (``fusionedge explain --out explain.png|mp4``).

One colour scale serves the whole picture — cells, frames and audio segments — so a decision carried by
sound shows a warm spectrogram over cool frames, and one carried by sight the other way round. Warm
means "masking this lowers the decision" (evidence for it); regions that speak against the decision are
left uncoloured. Drawn with OpenCV alone, so it works on the runtime install; files are written
atomically (:mod:`fusionedge.sdk.fileio`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from fusionedge.sdk.annotate import attribution_line
from fusionedge.sdk.errors import InputError, MediaError
from fusionedge.sdk.explain import ExplainedClip
from fusionedge.sdk.fileio import write_bytes_atomic
from fusionedge.sdk.media import read_video

__all__ = ["render_explain_image", "spectrogram_db", "write_explain_image", "write_explain_video"]

_FONT_SCALE = 0.55
_WHITE, _GREY, _BG = (255, 255, 255), (170, 170, 170), (32, 32, 32)
_FRAME_W = 320  # px per frame tile
_SPEC_H = 170  # px of the spectrogram panel
_FLOOR_DB = 60.0  # the spectrogram shows the top 60 dB


def spectrogram_db(samples: np.ndarray, rate: int, *, n_fft: int = 512, hop: int = 128) -> np.ndarray:
    """Log-power spectrogram of a mono waveform, ``(n_fft // 2 + 1, frames)`` in dB (max 0).

    Args:
        samples: ``(S,)`` float waveform.
        rate: its sample rate, Hz (only checked).
        n_fft: window length, samples (a Hann window).
        hop: step between windows, samples.

    Raises:
        InputError: not a 1-D waveform, or a bad rate or window.
    """
    x = np.asarray(samples, np.float64)
    if x.ndim != 1 or rate <= 0 or n_fft < 2 or hop < 1:
        raise InputError(f"spectrogram needs a 1-D waveform and positive rate/n_fft/hop, got shape {x.shape}")
    pad = np.pad(x, (n_fft // 2, n_fft // 2))
    count = max(1, 1 + (len(pad) - n_fft) // hop)
    frames = np.lib.stride_tricks.sliding_window_view(pad, n_fft)[::hop][:count]
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2  # (frames, bins)
    db = 10.0 * np.log10(power.T + 1e-10)
    return db - db.max()


def render_explain_image(explained: ExplainedClip) -> np.ndarray:
    """The picture of one explained clip, BGR uint8 (see the module docstring for the colours).

    Top: the decision, each sense's share and the colour scale. Middle: the ``T`` frames the model
    saw, warm where masking a cell lowers the decision, each labelled with its time and the evidence
    of the frame as a whole. Bottom: the spectrogram of the window's audio (0 to Nyquist, low
    frequencies at the bottom), warm over the segments whose silencing lowers the decision.
    """
    import cv2

    m = explained.map
    scale = _scale(explained)
    frames = explained.frames
    t = len(m.frame_times)
    tile_h = _FRAME_W * 3 // 5 if frames is None else round(_FRAME_W * frames.shape[1] / frames.shape[2])
    width = max(t, 2) * _FRAME_W
    tiles = []
    for i in range(t):
        if frames is None:
            tile = np.full((tile_h, _FRAME_W, 3), 48, np.uint8)
            _text(tile, "no video", (10, tile_h // 2), _GREY)
        else:
            bgr = cv2.resize(np.ascontiguousarray(frames[i][..., ::-1]), (_FRAME_W, tile_h),
                             interpolation=cv2.INTER_AREA)
            tile = _overlay(bgr, _upsample(m.spatial, tile_h, _FRAME_W, m.cell, explained), scale)
            cv2.rectangle(tile, (0, 0), (_FRAME_W - 1, tile_h - 1), (0, 0, 0), 1)
        label = f"t={m.frame_times[i]:.2f}s"
        if m.frames is not None:
            label += f"  frame {m.frames[i]:+.2f}"
        footer = np.full((26, _FRAME_W, 3), _BG, np.uint8)
        _text(footer, label, (6, 18), _WHITE)
        tiles.append(np.vstack([tile, footer]))
    row = np.hstack(tiles)
    if row.shape[1] < width:
        row = np.hstack([row, np.full((row.shape[0], width - row.shape[1], 3), _BG, np.uint8)])
    return np.vstack([_header(explained, width, scale), row, _audio_panel(explained, width, scale, None)])


def write_explain_image(explained: ExplainedClip, out_path: str | Path) -> Path:
    """Write :func:`render_explain_image` as a PNG (or JPEG by suffix), atomically.

    Raises:
        MediaError: OpenCV cannot encode that suffix.
        OSError: the folder cannot be written.
    """
    import cv2

    out = Path(out_path)
    ok, data = cv2.imencode(out.suffix.lower() or ".png", render_explain_image(explained))
    if not ok:
        raise MediaError(f"{out}: OpenCV cannot write an image with this suffix (use .png or .jpg)")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, data.tobytes())
    return out


def write_explain_video(
    explained: ExplainedClip, video_path: str | Path | None, out_path: str | Path, *, start_seconds: float = 0.0,
) -> Path:
    """Write the clip window as an mp4: each frame with the spatial evidence, the spectrogram below with a
    playhead at the frame's time. Without video, the spectrogram alone plays at 10 frames per second.

    Raises:
        MediaError: the source cannot be decoded or the output cannot be written.
        OSError: the folder cannot be written.
    """
    import cv2

    m = explained.map
    scale = _scale(explained)
    seconds = explained.clip_seconds
    if video_path is not None:
        clip = read_video(video_path, max_seconds=seconds, start_seconds=start_seconds,
                          downscale_to=(_FRAME_W * 2, _FRAME_W * 2))
        fps, source = float(clip.fps), clip.frames
    else:
        fps, source = 10.0, None
    count = len(source) if source is not None else max(1, round(seconds * fps))
    w = 2 * _FRAME_W
    h = w * 3 // 5 if source is None else round(w * source.shape[1] / source.shape[2]) // 2 * 2
    header = _header(explained, w, scale)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".explain-") as folder:
        tmp = Path(folder) / "explain.mp4"
        writer = None
        try:
            for k in range(count):
                if source is None:
                    tile = np.full((h, w, 3), 48, np.uint8)
                    _text(tile, "no video", (10, h // 2), _GREY)
                else:
                    bgr = cv2.resize(np.ascontiguousarray(source[k][..., ::-1]), (w, h), interpolation=cv2.INTER_AREA)
                    tile = _overlay(bgr, _upsample(m.spatial, h, w, m.cell, explained), scale)
                img = np.vstack([header, tile, _audio_panel(explained, w, scale, k / fps)])
                if writer is None:
                    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                             (img.shape[1], img.shape[0]))
                    if not writer.isOpened():
                        raise MediaError(f"{out}: cannot open an mp4 video writer in this OpenCV build")
                writer.write(img)
        finally:
            if writer is not None:
                writer.release()
        if not tmp.exists() or tmp.stat().st_size == 0:
            raise MediaError(f"{out}: the video writer produced no file")
        write_bytes_atomic(out, tmp.read_bytes())
    return out


# ------------------------------------------------------------------------------------------ parts


def _scale(explained: ExplainedClip) -> float:
    """The largest positive evidence anywhere in the map: the top of the one colour scale."""
    m = explained.map
    values = [a.max() for a in (m.spatial, m.frames, m.audio) if a is not None and a.size]
    return max([float(v) for v in values] + [1e-6])


def _upsample(spatial: np.ndarray | None, h: int, w: int, cell: int, explained: ExplainedClip) -> np.ndarray | None:
    """The cell map stretched to a tile: the model input is the frame stretched to its size, so cells
    map to the frame proportionally (the last row/column of cells may be narrower)."""
    if spatial is None:
        return None
    import cv2

    rows, cols = spatial.shape
    g_h, g_w = explained.input_hw
    ys = np.minimum((np.arange(h) * g_h / h) // cell, rows - 1).astype(int)
    xs = np.minimum((np.arange(w) * g_w / w) // cell, cols - 1).astype(int)
    blocky = spatial[ys[:, None], xs[None, :]].astype(np.float32)
    return cv2.GaussianBlur(blocky, (0, 0), sigmaX=max(1.0, w / cols / 6))


def _overlay(bgr: np.ndarray, values: np.ndarray | None, scale: float) -> np.ndarray:
    """Warm colours where ``values`` (same h, w) are positive, their opacity growing with the value."""
    import cv2

    if values is None:
        return bgr
    v = np.clip(values / scale, 0.0, 1.0)
    heat = cv2.applyColorMap((v * 255).astype(np.uint8), cv2.COLORMAP_INFERNO).astype(np.float32)
    alpha = (0.75 * np.sqrt(v))[..., None]
    return (bgr.astype(np.float32) * (1 - alpha) + heat * alpha).astype(np.uint8)


def _header(explained: ExplainedClip, width: int, scale: float) -> np.ndarray:
    import cv2

    m = explained.map
    img = np.full((78, width, 3), _BG, np.uint8)
    _text(img, f"{m.event}  {m.score:.2f}", (10, 26), _WHITE, 0.8)
    _text(img, attribution_line(m.attribution.contribution), (10, 56), _WHITE, 0.65)
    bar_x, bar_w = max(width - 300, 260), 200
    ramp = cv2.applyColorMap(np.linspace(0, 255, bar_w).astype(np.uint8)[None].repeat(12, 0),
                             cv2.COLORMAP_INFERNO)
    img[14:26, bar_x : bar_x + bar_w] = ramp
    _text(img, "0", (bar_x - 14, 25), _GREY)
    _text(img, f"{scale:.1f}", (bar_x + bar_w + 6, 25), _GREY)
    _text(img, "warm: masking it lowers the decision", (bar_x - 60, 46), _GREY, 0.45)
    _text(img, "(fall of the margin over 'none')", (bar_x - 60, 66), _GREY, 0.45)
    return img


def _audio_panel(explained: ExplainedClip, width: int, scale: float, playhead: float | None) -> np.ndarray:
    import cv2

    m = explained.map
    panel = np.full((_SPEC_H + 50, width, 3), _BG, np.uint8)
    left, right, top = 44, width - 10, 8
    inner_w = right - left
    if explained.audio is None:
        _text(panel, "no audio", (left, top + _SPEC_H // 2), _GREY)
        return panel
    db = np.clip(spectrogram_db(explained.audio, explained.sample_rate), -_FLOOR_DB, 0.0)
    grey = ((db + _FLOOR_DB) / _FLOOR_DB * 255).astype(np.uint8)[::-1]  # low frequencies at the bottom
    spec = cv2.cvtColor(cv2.resize(grey, (inner_w, _SPEC_H), interpolation=cv2.INTER_LINEAR), cv2.COLOR_GRAY2BGR)
    if m.audio is not None:
        edges = np.asarray(m.audio_edges) / explained.clip_seconds * inner_w
        cols = np.minimum(np.searchsorted(edges, np.arange(inner_w) + 0.5, side="right") - 1, len(m.audio) - 1)
        values = np.repeat(m.audio[cols][None].astype(np.float32), _SPEC_H, axis=0)
        spec = _overlay(spec, values, scale)
        for k, e in enumerate(edges[:-1]):
            x = round(e)
            cv2.line(spec, (x, 0), (x, 6), _GREY, 1)
            if inner_w / len(m.audio) > 44:
                _text(spec, f"{m.audio[k]:+.1f}", (x + 3, 14), _WHITE, 0.4, outline=True)
    if playhead is not None:
        x = round(playhead / explained.clip_seconds * inner_w)
        cv2.line(spec, (x, 0), (x, _SPEC_H - 1), (80, 255, 80), 2)
    panel[top : top + _SPEC_H, left:right] = spec
    nyquist = explained.sample_rate / 2000
    _text(panel, f"{nyquist:g}k", (4, top + 12), _GREY, 0.4)
    _text(panel, "0 Hz", (4, top + _SPEC_H), _GREY, 0.4)
    for i in range(5):
        x = left + round(i / 4 * (inner_w - 1))
        cv2.line(panel, (x, top + _SPEC_H), (x, top + _SPEC_H + 5), _GREY, 1)
        _text(panel, f"{i / 4 * explained.clip_seconds:.2f}s", (max(0, x - 16), top + _SPEC_H + 20), _GREY, 0.42)
    _text(panel, "audio: warm where silencing a slice lowers the decision", (left, top + _SPEC_H + 36), _GREY, 0.42)
    return panel


def _text(img: np.ndarray, text: str, org: tuple[int, int], colour: tuple[int, int, int],
          size: float = _FONT_SCALE, *, outline: bool = False) -> None:
    import cv2

    if outline:  # legible over a picture
        cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, size, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, size, colour, 1, cv2.LINE_AA)

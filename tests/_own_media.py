"""A task no one here designed, made with other tools: ffmpeg draws coloured shapes over noise, sox
makes tones and noises.

Each clip is ``seconds`` long. The video (``size``, ``fps``) is grey noise (``nullsrc`` + ``geq``)
with a red square and/or a blue bar (``color`` sources, ``overlay``) that move during the first
half of the clip and then hold still, so the last frame's boxes are known exactly. The audio (``rate`` Hz,
mono) is quiet brown noise plus the tags' sounds (a hum, a beep, a hiss, a chirp, a buzz) mixed by
sox. Labels (also written to ``labels.json`` beside the manifest, every class listed):

- ``kind="fused"``: event = which shapes are seen (``square``, ``bar``, ``both``), audio tags = the
  sounds, boxes = the shapes (classes ``square``, ``bar``).
- ``kind="video"``: the same video, no audio file, no tags.
- ``kind="audio"``: no video file; event = ``tonal`` (hum or beep only), ``noisy`` (hiss only) or
  ``mixed``, audio tags = the sounds.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

__all__ = ["AUDIO_EVENTS", "OWN_EVENTS", "OWN_OBJECTS", "OWN_TAGS", "make_own_media_set"]

OWN_EVENTS = ("bar", "both", "square")
OWN_TAGS = ("beep", "buzz", "chirp", "hiss", "hum")
OWN_OBJECTS = ("bar", "square")
AUDIO_EVENTS = ("mixed", "noisy", "tonal")

_SOUNDS = {"hum": "sine 120", "beep": "sine 1500", "hiss": "whitenoise", "chirp": "sine 400-3000",
           "buzz": "square 220"}
_SHAPES = {"square": ("red", 40, 40), "bar": ("blue", 20, 70)}


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _video(path: Path, shapes: dict[str, tuple[int, int, int, int]], size: tuple[int, int], fps: int,
           seconds: float) -> None:
    """Write an mp4 of grey noise with each shape moving from (x0, y0) by (dx, dy) in the first half."""
    w, h = size
    graph = [f"nullsrc=s={w}x{h}:r={fps}:d={seconds},geq=lum='128+40*(random(1)-0.5)':cb=128:cr=128[bg]"]
    last = "bg"
    for i, (name, (x0, y0, dx, dy)) in enumerate(shapes.items()):
        color, sw, sh = _SHAPES[name]
        graph.append(f"color=c={color}:s={sw}x{sh}:r={fps}:d={seconds}[s{i}]")
        move = f"min(t/{seconds / 2:g}\\,1)"
        graph.append(f"[{last}][s{i}]overlay=x='{x0}+{dx}*{move}':y='{y0}+{dy}*{move}':"
                     f"eval=frame:shortest=1[o{i}]")
        last = f"o{i}"
    _run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-filter_complex", ";".join(graph),
          "-map", f"[{last}]", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
          "-t", str(seconds), str(path)])


def _audio(path: Path, tags: list[str], rate: int, seconds: float) -> None:
    """Write a mono wav: brown noise at a low level plus each tag's sound, mixed by sox."""
    gens = ["brownnoise"] + [_SOUNDS[t] for t in tags]
    levels = ["0.05"] + ["0.3"] * len(tags)
    cmd = ["sox", "-r", str(rate), "-c", str(len(gens)), "-n", "-b", "16", str(path), "synth", str(seconds)]
    for g in gens:
        cmd += g.split()
    cmd += ["remix", ",".join(f"{i + 1}v{v}" for i, v in enumerate(levels))]
    _run(cmd)


def make_own_media_set(root: Path, count: int, seed: int, *, kind: str = "fused",
                       size: tuple[int, int] = (320, 240), fps: int = 8, seconds: float = 2.0,
                       rate: int = 22050) -> Path:
    """Write ``count`` clips and their ``manifest.jsonl`` under ``root``; returns ``root``."""
    rng = np.random.default_rng(seed)
    media = root / "media"
    media.mkdir(parents=True, exist_ok=True)
    w, h = size
    lines = []
    for k in range(count):
        sid = f"{seed:03d}_{k:04d}"
        rec: dict = {"id": sid}
        tags = [t for t in OWN_TAGS if rng.random() < 0.4]
        if kind == "audio" and not tags:
            tags = [str(rng.choice(OWN_TAGS))]
        if kind in ("fused", "video"):
            event = OWN_EVENTS[k % 3]
            names = ["square", "bar"] if event == "both" else [event]
            shapes, boxes = {}, []
            for name in names:
                _, sw, sh = _SHAPES[name]
                dx, dy = int(rng.integers(-w // 8, w // 8 + 1)), int(rng.integers(-h // 10, h // 10 + 1))
                x1 = int(rng.integers(abs(dx) + 1, w - sw - abs(dx)))
                y1 = int(rng.integers(abs(dy) + 1, h - sh - abs(dy)))
                shapes[name] = (x1 - dx, y1 - dy, dx, dy)
                boxes.append({"label": name, "box": [x1, y1, x1 + sw, y1 + sh]})
            _video(media / f"{sid}.mp4", shapes, size, fps, seconds)
            rec.update(video=f"media/{sid}.mp4", event=event, boxes=boxes, width=w, height=h)
        if kind in ("fused", "audio"):
            _audio(media / f"{sid}.wav", tags, rate, seconds)
            rec.update(audio=f"media/{sid}.wav", audio_tags=tags)
        if kind == "audio":
            tonal = {"hum", "beep", "chirp", "buzz"} & set(tags)
            rec["event"] = "mixed" if tonal and "hiss" in tags else ("tonal" if tonal else "noisy")
        lines.append(json.dumps(rec))
    (root / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    vocab = {"events": list(AUDIO_EVENTS if kind == "audio" else OWN_EVENTS),
             "audio_tags": [] if kind == "video" else list(OWN_TAGS),
             "objects": [] if kind == "audio" else list(OWN_OBJECTS)}
    (root / "labels.json").write_text(json.dumps(vocab))  # every class, even one this draw never used
    return root

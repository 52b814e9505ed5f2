"""Camera frames that show no road at all: screens, test patterns, noise and flat colours.

A clip from a camera that is covered, pointed at a screen or fed a test signal holds no vehicle,
pedestrian or traffic light, and so no emergency light bar: its event is decided by the sound alone
(``none``, or ``emergency_behind`` when a siren is heard). Without such frames in training, a model
has only ever seen roads and reads red or blue patches in a test pattern as a light bar. The
patterns here are drawn with numpy and OpenCV (never with the tools that make the outside-media
evaluation set), and several of them move, flicker or hold saturated red and blue areas on purpose:

``bars``     vertical colour bars (some with a lower strip), optionally scrolling
``gradient`` horizontal, vertical or radial colour ramps, drifting
``checker``  a checkerboard of two colours, scrolling
``noise``    grey or colour noise, new every frame
``flat``     one flat colour (black, grey, a saturated hue) with sensor noise
``plasma``   smooth colourful interference patterns that move (fractal-like)
``cells``    a coarse grid of random cells that change from frame to frame (cellular automata)
``screen``   a user interface: a background, panels, lines of "text" blocks and a blinking cursor
``flashing`` the whole frame or large blocks switching between colours, red and blue included
``fractal``  an escape-time fractal (Mandelbrot-like) in a cycling colour map, zooming slowly
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["NON_ROAD_PATTERNS", "render_non_road"]

NON_ROAD_PATTERNS: tuple[str, ...] = (
    "bars", "gradient", "checker", "noise", "flat", "plasma", "cells", "screen", "flashing", "fractal",
)

_SATURATED = np.array(
    [[255, 0, 0], [0, 0, 255], [0, 255, 0], [255, 255, 0], [0, 255, 255], [255, 0, 255], [255, 255, 255],
     [0, 0, 0], [128, 128, 128], [200, 30, 30], [30, 60, 200]],
    dtype=np.float32,
)


def _colour(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.6:
        return _SATURATED[rng.integers(len(_SATURATED))] * rng.uniform(0.6, 1.0)
    return rng.uniform(0, 255, size=3).astype(np.float32)


def _bars(rng, T, H, W):
    k = int(rng.integers(4, 9))
    cols = np.stack([_colour(rng) for _ in range(k)])
    x = np.arange(W)
    shift = rng.uniform(-6, 6) if rng.random() < 0.4 else 0.0
    low = rng.random() < 0.5
    low_cols = np.stack([_colour(rng) for _ in range(k)])
    out = np.empty((T, H, W, 3), np.float32)
    for f in range(T):
        idx = (((x + shift * f) % W) * k // W).astype(int)
        out[f] = cols[idx][None]
        if low:
            out[f, int(0.75 * H):] = low_cols[idx][None]
    return out


def _gradient(rng, T, H, W):
    a, b = _colour(rng), _colour(rng)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    kind = rng.integers(3)
    drift = rng.uniform(-0.03, 0.03)
    out = np.empty((T, H, W, 3), np.float32)
    for f in range(T):
        if kind == 0:
            u = xx / W
        elif kind == 1:
            u = yy / H
        else:
            u = np.hypot(xx - W / 2, yy - H / 2) / np.hypot(W / 2, H / 2)
        u = (u + drift * f) % 1.0
        out[f] = a * (1 - u[..., None]) + b * u[..., None]
    return out


def _checker(rng, T, H, W):
    a, b = _colour(rng), _colour(rng)
    size = int(rng.integers(6, 48))
    vx, vy = rng.uniform(-4, 4, size=2)
    yy, xx = np.mgrid[0:H, 0:W]
    out = np.empty((T, H, W, 3), np.float32)
    for f in range(T):
        m = ((((xx + vx * f) // size) + ((yy + vy * f) // size)) % 2).astype(bool)
        out[f] = np.where(m[..., None], a, b)
    return out


def _noise(rng, T, H, W):
    mean, sd = rng.uniform(40, 200), rng.uniform(15, 70)
    if rng.random() < 0.5:
        g = rng.normal(mean, sd, size=(T, H, W, 1)).astype(np.float32)
        return np.repeat(g, 3, axis=3)
    return rng.normal(mean, sd, size=(T, H, W, 3)).astype(np.float32)


def _flat(rng, T, H, W):
    c = _colour(rng) if rng.random() < 0.7 else np.full(3, rng.uniform(0, 255), np.float32)
    return np.broadcast_to(c, (T, H, W, 3)).astype(np.float32)


def _plasma(rng, T, H, W):
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    waves = [(rng.uniform(0.01, 0.08, size=2), rng.uniform(0, 2 * np.pi), rng.uniform(-0.6, 0.6)) for _ in range(3)]
    phase = rng.uniform(0, 2 * np.pi, size=3)
    out = np.empty((T, H, W, 3), np.float32)
    for f in range(T):
        v = sum(np.sin(k[0] * xx + k[1] * yy + p + s * f) for k, p, s in waves)
        out[f] = 127.5 + 127.5 * np.sin(v[..., None] * rng.uniform(1.0, 1.001) + phase)
    return out


def _cells(rng, T, H, W):
    ch, cw = int(rng.integers(8, 40)), int(rng.integers(8, 40))
    a, b = _colour(rng), _colour(rng)
    grid = rng.random((ch, cw)) < 0.4
    out = np.empty((T, H, W, 3), np.float32)
    for f in range(T):
        flip = rng.random((ch, cw)) < rng.uniform(0.05, 0.3)
        grid = grid ^ flip
        m = cv2.resize(grid.astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST).astype(bool)
        out[f] = np.where(m[..., None], a, b)
    return out


def _screen(rng, T, H, W):
    bg = _colour(rng) * 0.5 + (127 if rng.random() < 0.5 else 0)
    img = np.empty((H, W, 3), np.float32)
    img[:] = np.clip(bg, 0, 255)
    for _ in range(int(rng.integers(1, 5))):  # panels
        x1, y1 = int(rng.integers(0, W - 20)), int(rng.integers(0, H - 20))
        x2, y2 = int(rng.integers(x1 + 10, W)), int(rng.integers(y1 + 10, H))
        cv2.rectangle(img, (x1, y1), (x2, y2), tuple(float(v) for v in _colour(rng)), -1)
    ink = tuple(float(v) for v in _colour(rng))
    line_h = int(rng.integers(5, 12))
    for y in range(int(rng.integers(4, 20)), H - line_h, line_h + int(rng.integers(2, 6))):
        x = int(rng.integers(4, 20))
        while x < W - 10 and rng.random() < 0.93:
            w = int(rng.integers(3, 18))
            cv2.rectangle(img, (x, y), (min(W - 1, x + w), y + line_h - 2), ink, -1)
            x += w + int(rng.integers(2, 6))
    out = np.repeat(img[None], T, axis=0)
    cx, cy, rate = int(rng.integers(4, W - 8)), int(rng.integers(4, H - 12)), rng.uniform(1.0, 3.0)
    for f in range(T):
        if (f * rate / 12.0) % 1.0 < 0.5:
            out[f, cy : cy + line_h, cx : cx + 3] = ink
    return out


def _flashing(rng, T, H, W, fps):
    cols = np.stack([_colour(rng) for _ in range(int(rng.integers(2, 4)))])
    if rng.random() < 0.5:
        cols[:2] = ([255, 0, 0], [0, 0, 255])  # red and blue, like a light bar but no vehicle
    rate = rng.uniform(1.0, 6.0)
    blocks = 1 if rng.random() < 0.5 else int(rng.integers(2, 5))
    phase = rng.random(blocks)
    out = np.empty((T, H, W, 3), np.float32)
    edges = np.linspace(0, W, blocks + 1).astype(int)
    for f in range(T):
        for b in range(blocks):
            c = cols[int((f / fps * rate + phase[b]) * len(cols)) % len(cols)]
            out[f, :, edges[b] : edges[b + 1]] = c
    return out


def _fractal(rng, T, H, W):
    """Computed at half size and scaled up (the escape-time loop is the costly part)."""
    small = _fractal_full(rng, T, (H + 1) // 2, (W + 1) // 2)
    return np.stack([cv2.resize(f, (W, H), interpolation=cv2.INTER_LINEAR) for f in small])


def _fractal_full(rng, T, H, W):
    centre = complex(rng.uniform(-0.8, -0.4), rng.uniform(-0.3, 0.3))
    span, zoom = rng.uniform(1.5, 3.5), rng.uniform(0.97, 1.0)
    shift = rng.uniform(0, 2 * np.pi, size=3)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    out = np.empty((T, H, W, 3), np.float32)
    for f in range(T):
        s = span * zoom**f
        c = centre + (xx / W - 0.5) * s + 1j * (yy / H - 0.5) * s * H / W
        z = np.zeros_like(c)
        count = np.zeros(c.shape)
        for _ in range(24):
            inside = np.abs(z) <= 2.0
            z[inside] = z[inside] ** 2 + c[inside]
            count += inside
        v = count[..., None] / 24.0 * 2 * np.pi * 3
        out[f] = np.where(count[..., None] >= 24, 0.0, 127.5 + 127.5 * np.sin(v + shift))
    return out


def render_non_road(
    rng: np.random.Generator, frames: int, height: int, width: int, fps: float
) -> tuple[np.ndarray, str]:
    """Render a clip that shows no road.

    Args:
        rng: the sample's video generator (consumed).
        frames: number of frames.
        height, width: frame size in pixels.
        fps: frame rate (for the flashing pattern's rate in Hz).

    Returns:
        ``(frames, pattern)``: uint8 ``(T, H, W, 3)`` RGB, and which of :data:`NON_ROAD_PATTERNS` it is.
    """
    pattern = NON_ROAD_PATTERNS[int(rng.integers(len(NON_ROAD_PATTERNS)))]
    T, H, W = frames, height, width
    if pattern == "flashing":
        img = _flashing(rng, T, H, W, fps)
    else:
        maker = {"bars": _bars, "gradient": _gradient, "checker": _checker, "noise": _noise, "flat": _flat,
                 "plasma": _plasma, "cells": _cells, "screen": _screen, "fractal": _fractal}[pattern]
        img = maker(rng, T, H, W)
    img = img * rng.uniform(0.5, 1.1)  # exposure
    if rng.random() < 0.4:  # out of focus (a screen filmed too close)
        sigma = rng.uniform(0.6, 3.0)
        img = np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in img])
    img = img + rng.normal(0.0, rng.uniform(0.5, 6.0), size=(1, H, W, 3)).astype(np.float32)
    return np.clip(img, 0.0, 255.0).astype(np.uint8), pattern

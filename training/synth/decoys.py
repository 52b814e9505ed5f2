"""Lights that are not an emergency light bar, and weather, for the road scenes of :mod:`.scene`.

A model that has only seen one kind of flashing light learns "something red or blue blinks" instead
of "a light bar on an emergency vehicle flashes". With ``SceneFlags.decoy_lights`` (drawn
independently of the event) a scene gets one to three of these:

``hazards``        a car's amber indicators blink together at 1-2 Hz (both sides)
``turn_signal``    one side of a car blinks amber at 1-2 Hz
``brake``          a car's tail lights glow bright red, from the start or from a moment in the clip
``light_change``   a traffic light changes (green to amber, amber to red, red to green) mid-clip
``sign``           a shop sign or billboard lamp on the roadside: red, blue, amber, green or white,
                   steady, blinking, or alternating two colours (red and blue included)
``reflection``     a coloured light reflected on the road: a soft glowing patch that flickers

and, drawn for every road scene alike, the weather and the exposure: rain (streaks and a veil),
sun glare (a bright washed-out patch), or a very dark exposure. The car and traffic-light decoys set
keys in the objects' ``extra`` dict that the scene's drawing reads; signs and reflections are
drawn by :func:`draw_signs` behind the objects. Red and blue cars, shirts and signs that do not
flash are part of the scene's palettes already.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = ["DECOYS", "WEATHERS", "Sign", "apply_weather", "draw_signs", "place_decoys", "sample_weather"]

DECOYS: tuple[str, ...] = ("hazards", "turn_signal", "brake", "light_change", "sign", "reflection")
WEATHERS: tuple[str, ...] = ("clear", "rain", "glare", "dark")
P_WEATHER = (0.68, 0.12, 0.1, 0.1)
AMBER = (255, 150, 20)
BRAKE_RED = (255, 40, 40)
_SIGN_COLOURS = ((255, 35, 30), (40, 80, 255), (255, 160, 20), (40, 230, 90), (245, 245, 235), (230, 40, 200))


@dataclass
class Sign:
    """A lamp that is not on an object: a roadside sign or a reflection on the road."""

    x: float  # px, centre
    y: float  # px, centre
    w: float  # px
    h: float  # px
    colours: tuple  # one colour: steady or blinking; two: alternating
    freq: float  # Hz, 0 = steady
    phase: float  # cycles
    reflection: bool = False  # a soft patch on the road, drawn into the glow layer only

    def colour_at(self, t: float) -> tuple | None:
        """The lit colour at time ``t``, or None while a blinking lamp is off."""
        if self.freq <= 0:
            return self.colours[0]
        cycle = (self.freq * t + self.phase) % 1.0
        if len(self.colours) == 2:
            return self.colours[0] if cycle < 0.5 else self.colours[1]
        return self.colours[0] if cycle < 0.5 else None


def _blink(rng: np.random.Generator) -> dict:
    return {"freq": float(rng.uniform(1.0, 2.0)), "phase": float(rng.random())}


def place_decoys(rng: np.random.Generator, objs: list, width: int, height: int, horizon: float,
                 seconds: float) -> tuple[list[str], list[Sign]]:
    """Choose one to three decoys and attach them to the scene.

    Car decoys go on ordinary cars (``o.kind == "car"``) and the light change on a traffic light;
    where the scene has none, a sign takes its place.

    Returns:
        ``(names, signs)``: the decoys used (of :data:`DECOYS`) and the signs/reflections to draw.
    """
    names, signs = [], []
    cars = [o for o in objs if o.kind == "car" and not {"blink", "brake"} & set(o.extra)]
    lights = [o for o in objs if o.kind == "traffic_light" and "switch" not in o.extra]
    for _ in range(int(rng.integers(1, 4))):
        name = DECOYS[int(rng.integers(len(DECOYS)))]
        if name in ("hazards", "turn_signal", "brake") and not cars:
            name = "sign"
        if name == "light_change" and not lights:
            name = "sign"
        if name in ("hazards", "turn_signal", "brake"):
            car = cars.pop(int(rng.integers(len(cars))))
            if name == "brake":
                car.extra["brake"] = float(rng.uniform(0.0, 0.7) * seconds) if rng.random() < 0.5 else 0.0
            else:
                sides = (True, True) if name == "hazards" else ((True, False) if rng.random() < 0.5 else (False, True))
                car.extra["blink"] = {**_blink(rng), "sides": sides}
        elif name == "light_change":
            tl = lights.pop(int(rng.integers(len(lights))))
            tl.extra["switch"] = (float(rng.uniform(0.1, 0.9) * seconds), (tl.state + 2) % 3)
        elif name == "sign":
            two = rng.random() < 0.35
            c = [_SIGN_COLOURS[i] for i in rng.choice(len(_SIGN_COLOURS), size=2, replace=False)]
            if two and rng.random() < 0.5:
                c = [_SIGN_COLOURS[0], _SIGN_COLOURS[1]]  # red and blue, alternating, but no vehicle
            freq = float(rng.uniform(0.5, 5.0)) if two or rng.random() < 0.5 else 0.0
            w, h = rng.uniform(0.02, 0.1) * width, rng.uniform(0.015, 0.06) * height
            signs.append(Sign(x=float(rng.uniform(0, width)), y=float(horizon - rng.uniform(0.0, 0.2) * height),
                              w=float(w), h=float(h), colours=tuple(c[:2] if two else c[:1]), freq=freq,
                              phase=float(rng.random())))
        else:  # reflection
            c = _SIGN_COLOURS[int(rng.integers(len(_SIGN_COLOURS)))]
            signs.append(Sign(x=float(rng.uniform(0.1, 0.9) * width),
                              y=float(horizon + rng.uniform(0.3, 0.9) * (height - horizon)),
                              w=float(rng.uniform(0.05, 0.2) * width), h=float(rng.uniform(0.02, 0.06) * height),
                              colours=(c,), freq=float(rng.uniform(0.0, 4.0)) if rng.random() < 0.5 else 0.0,
                              phase=float(rng.random()), reflection=True))
        names.append(name)
    return names, signs


def draw_signs(img: np.ndarray, glow: np.ndarray, signs: list[Sign], t: float, brightness: float) -> None:
    """Draw the signs (lit: unshaded and glowing; off: a dark panel) and the reflections (glow only)."""
    for s in signs:
        colour = s.colour_at(t)
        if s.reflection:
            if colour is not None:
                axes = (max(1, int(s.w / 2)), max(1, int(s.h / 2)))
                cv2.ellipse(glow, (int(s.x), int(s.y)), axes, 0, 0, 360, tuple(0.5 * v for v in colour), -1)
            continue
        p1, p2 = (int(s.x - s.w / 2), int(s.y - s.h / 2)), (int(s.x + s.w / 2), int(s.y + s.h / 2))
        if colour is None:
            cv2.rectangle(img, p1, p2, (45 * brightness, 45 * brightness, 48 * brightness), -1)
        else:
            cv2.rectangle(img, p1, p2, colour, -1)
            cv2.rectangle(glow, p1, p2, colour, -1)


def sample_weather(rng: np.random.Generator, width: int, height: int) -> dict:
    """Draw the weather/exposure of a road clip: ``{"kind": one of WEATHERS, ...its parameters}``."""
    kind = WEATHERS[int(rng.choice(len(WEATHERS), p=P_WEATHER))]
    if kind == "rain":
        n = int(rng.integers(60, 400))
        return {"kind": kind, "veil": float(rng.uniform(0.1, 0.35)), "n": n,
                "xy": rng.uniform(0, 1, size=(n, 2)) * (width, height), "len": float(rng.uniform(4, 14)),
                "slant": float(rng.uniform(-0.4, 0.4)), "fall": float(rng.uniform(15, 40))}
    if kind == "glare":
        return {"kind": kind, "x": float(rng.uniform(0, width)), "y": float(rng.uniform(0, 0.5 * height)),
                "r": float(rng.uniform(0.15, 0.5) * width), "gain": float(rng.uniform(120, 320))}
    if kind == "dark":
        return {"kind": kind, "gain": float(rng.uniform(0.15, 0.45))}
    return {"kind": "clear"}


def apply_weather(img: np.ndarray, weather: dict, frame: int, lamps: np.ndarray | None = None) -> np.ndarray:
    """Apply the weather to one float32 (H, W, 3) frame (before blur and sensor noise); in place when possible.

    ``lamps`` is the frame's emissive layer (non-zero where a lamp is lit): glare leaves those pixels
    alone, as a lit lamp outshines the haze around it, so a light bar in the glare still shows
    which lamp is lit.
    """
    kind = weather["kind"]
    H, W = img.shape[:2]
    if kind == "rain":
        veil = weather["veil"]
        img *= 1.0 - veil
        img += veil * 150.0
        if "_streaks" not in weather:  # drawn once per clip, then moved down by the fall per frame
            streaks = np.zeros((H, W), np.uint8)
            for x, y in weather["xy"]:
                x2, y2 = x + weather["slant"] * weather["len"], y + weather["len"]
                cv2.line(streaks, (int(x), int(y)), (int(x2), int(y2)), 1, 1)
            weather["_streaks"] = streaks.astype(bool)
        img[np.roll(weather["_streaks"], int(weather["fall"] * frame) % H, axis=0)] = (190.0, 190.0, 200.0)
    elif kind == "glare":
        if "_haze" not in weather:  # the sun does not move within a clip
            yy, xx = np.ogrid[0:H, 0:W]
            d2 = ((xx - weather["x"]) ** 2 + (yy - weather["y"]) ** 2) / weather["r"] ** 2
            weather["_haze"] = (weather["gain"] * np.exp(-d2)).astype(np.float32)
        haze = weather["_haze"].copy()
        if lamps is not None:
            haze *= ~(lamps.max(axis=2) > 0)
        img += haze[..., None] * np.float32([1.0, 0.97, 0.85])
    elif kind == "dark":
        img *= weather["gain"]
    return img

"""Video rendering for the synthetic driving scenes: a forward-facing camera on a three-lane road.

A scene is laid out in metres on the ground plane (``X`` to the right, ``Z`` ahead of the camera) and
projected with a pinhole camera, so objects lower in the image are nearer and larger. Each frame is
drawn with OpenCV primitives in far-to-near order (nearer objects occlude farther ones):

* background, drawn once per clip: sky gradient, distant buildings and trees on the horizon, grass,
  sidewalks, asphalt with low-frequency texture, road edges and a double yellow centre line, haze;
* per frame: dashed lane markings moving toward the camera (ego motion), then the objects:
  cars (body, cabin, windows, wheels, tail lights or headlights), pedestrians (head, torso, arms and
  swinging legs), traffic lights (pole + housing with one lit lamp) and emergency vehicles (a tall
  white or yellow box with a checkered side band and a light bar on the roof);
* lamps are emissive: they are drawn unshaded and also into a glow layer that is blurred and added,
  strongly at night. Occluders are drawn black into the glow layer so a hidden lamp does not glow.

An emergency vehicle with its lights ON flashes its light bar: the left lamp red and the right lamp
blue alternate at 3-4 Hz with a random phase, and in every frame exactly one of them is lit, so a
single frame shows "lights on". With its lights OFF both lamps are dark grey.

The scene follows the latent values of :class:`~.rules.SceneFlags` that the audio also follows: the
lights-ON vehicle sits at ``ev_distance_m`` mid-clip and its depth changes by ``ev_depth_change_m``
over the clip (approach / recede / steady, the siren's envelope); with ``engine`` one extra car is at
``near_car_m`` (5-12 m) in a lane, and with ``speech`` one extra pedestrian at ``near_pedestrian_m``
(6-15 m). These three are "protected": placed first, jointly, fully (the vehicle) or mostly in view,
never overlapping each other on screen and never covered by another object. The other cars stay
beyond 14 m and the other pedestrians beyond 18 m during the whole clip.

Randomized per clip: lighting (day, dusk, night with the ego car's headlight cone and glowing
lamps), camera (focal length, horizon, height, centre), object placement and motion, deliberate
partial occlusion, optical blur, sensor noise and per-frame camera jitter; and, from
:mod:`.decoys`, weather (rain, glare, a dark exposure) and, with ``flags.decoy_lights``, lights that
are not a light bar (hazards, turn signals, brake lights, changing traffic lights, signs,
reflections). With ``flags.non_road`` the clip shows no road at all (:mod:`.nonroad`) and has no box.

The module is longer than most (~870 lines) on purpose: the layout, the drawing primitives and the
renderer share private geometry types (camera, style, object) and one draw order from one random
generator; split apart, those types would become a public surface that nothing else needs.

Boxes are for the **last frame**: the pixels each object covers there (the traffic light's housing,
not its pole), shifted by that frame's jitter and clipped to the image. Objects that are more than
half hidden behind nearer ones, or whose box is under 4 px on a side, get no box.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from fusionedge.sdk.spec import OBJECTS

from .decoys import AMBER, BRAKE_RED, apply_weather, draw_signs, place_decoys, sample_weather
from .nonroad import render_non_road
from .rules import FAR_CAR_MIN_M, FAR_PEDESTRIAN_MIN_M, SceneFlags

__all__ = ["LIGHTINGS", "VideoInfo", "render_video"]

LIGHTINGS: tuple[str, ...] = ("day", "dusk", "night")
P_LIGHTING = (0.5, 0.25, 0.25)

MIN_BOX_PX = 4  # boxes smaller than this on either side are dropped
MIN_VISIBLE = 0.5  # fraction of an object's own pixels that must be unoccluded to keep its box
P_OCCLUDER = 0.35  # chance that a car is placed deliberately in front of another object

LANE_W = 3.5  # metres
ROAD_EDGE = 1.5 * LANE_W  # three lanes: oncoming (left), ego, same direction (right)
SIDEWALK = ROAD_EDGE + 2.8

# Colours are RGB.
_CAR_COLOURS = np.array(
    [[170, 25, 30], [25, 55, 140], [60, 62, 66], [22, 22, 25], [175, 178, 182], [25, 85, 50],
     [110, 25, 35], [20, 30, 70], [200, 185, 150], [215, 215, 210], [200, 120, 30], [90, 130, 160]],
    dtype=np.float32,
)
_EV_BODIES = np.array([[238, 238, 232], [245, 205, 30], [215, 232, 45]], dtype=np.float32)
_EV_BANDS = np.array(
    [[[220, 30, 30], [238, 238, 232]], [[30, 150, 60], [245, 205, 30]], [[30, 60, 180], [245, 205, 30]],
     [[230, 100, 20], [20, 40, 140]]],
    dtype=np.float32,
)
_SHIRTS = np.array(
    [[200, 40, 40], [40, 90, 180], [230, 230, 225], [30, 30, 35], [60, 140, 70], [230, 180, 40],
     [130, 60, 150]],
    dtype=np.float32,
)
_PANTS = np.array([[35, 40, 70], [30, 30, 32], [90, 80, 70], [70, 90, 120], [120, 110, 90]], dtype=np.float32)
_SKIN = np.array([[240, 200, 170], [200, 150, 110], [150, 100, 70], [95, 60, 40]], dtype=np.float32)

_WINDOW = (45, 55, 70)
_TYRE = (18, 18, 20)
_LAMP_OFF_GREY = (70, 70, 72)
_EV_RED_ON, _EV_RED_DIM = (255, 35, 30), (95, 30, 30)
_EV_BLUE_ON, _EV_BLUE_DIM = (40, 80, 255), (30, 35, 95)
_TL_LIT = ((255, 40, 30), (255, 190, 20), (40, 255, 120))  # red, amber, green
_TL_DARK = (55, 55, 50)
TL_STATES = ("red", "amber", "green")  # the lit lamp, in _TL_LIT order


@dataclass(frozen=True)
class _Camera:
    width: int
    height: int
    focal: float  # px
    cx: float  # px, x of the vanishing point
    horizon: float  # px, y of the horizon
    cam_h: float  # m above the road

    def x(self, X, Z):
        return self.cx + self.focal * X / Z

    def y(self, Z):
        return self.horizon + self.focal * self.cam_h / Z

    def px(self, size_m, Z):
        return self.focal * size_m / Z


@dataclass
class _Style:
    lighting: str
    brightness: float  # scene albedo multiplier
    beam: float  # strength of the ego headlight cone (0 by day)
    glow_gain: float  # how much the blurred glow layer adds
    glow_sigma: float  # px
    noise_sigma: float  # uint8 units
    blur_sigma: float  # px, 0 = sharp
    jitter: np.ndarray  # (T, 2) int px per frame, camera shake
    ego_speed: float  # m/s, moves the lane dashes
    dash_phase: float  # m


@dataclass
class _Obj:
    kind: str  # one of OBJECTS
    X: float  # m, at t = 0
    Z: float  # m, at t = 0
    vX: float  # m/s
    vZ: float  # m/s
    w: float  # m
    h: float  # m (for a traffic light: the pole height; the housing sits on top)
    colour: tuple
    facing: str = "rear"  # rear | front
    lights: str | None = None  # emergency vehicle: on | off
    freq: float = 0.0  # Hz, light-bar flash or walking stride
    phase: float = 0.0  # cycles
    state: int = 0  # traffic light: lit lamp (0 red, 1 amber, 2 green)
    extra: dict = field(default_factory=dict)

    def at(self, t: float) -> tuple[float, float]:
        return self.X + self.vX * t, max(self.Z + self.vZ * t, 3.0)


@dataclass
class VideoInfo:
    """What was rendered (kept in the manifest's ``synth`` metadata)."""

    lighting: str
    lights_on_ev_box: list[int] | None  # the lights-ON emergency vehicle's box in the last frame
    objects_placed: dict[str, int]
    lights_on_ev_box_first: list[int] | None = None  # its box in the first frame (same rules, unoccluded)
    near_car_box: list[int] | None = None  # the engine's near car, last frame
    near_pedestrian_box: list[int] | None = None  # the talking pedestrian, last frame
    view: str = "road"  # "road", or the pattern of a clip that shows no road (nonroad.NON_ROAD_PATTERNS)
    decoys: list[str] = field(default_factory=list)  # decoy lights drawn (decoys.DECOYS)
    weather: str = "clear"  # decoys.WEATHERS
    # each boxed traffic light in the last frame: {"box": [x1, y1, x2, y2], "state": "red"|"amber"|"green"}
    traffic_lights: list[dict] = field(default_factory=list)


# A primitive: (op, geometry, rgb, emissive, boxed). op is "rect" (x1, y1, x2, y2 inclusive),
# "poly" (int32 array (N, 2), convex) or "circle" (cx, cy, r). An emissive primitive is a lamp: drawn
# unshaded and into the glow layer. Boxed primitives make up the object's box (all but a pole).


def _part(bx, by, bw, bh, fx1, fy1, fx2, fy2):
    """A rectangle given in fractions of the object's screen box, as inclusive int pixels."""
    x1 = int(round(bx + fx1 * bw))
    y1 = int(round(by + fy1 * bh))
    x2 = max(x1, int(round(bx + fx2 * bw)) - 1)
    y2 = max(y1, int(round(by + fy2 * bh)) - 1)
    return (x1, y1, x2, y2)


class _Parts:
    """Collects primitives placed in fractions of an object's screen box (bx, by, bw, bh)."""

    def __init__(self, bx: float, by: float, bw: float, bh: float):
        self.box = (bx, by, bw, bh)
        self.prims: list = []

    def rect(self, fx1, fy1, fx2, fy2, colour, lamp: bool = False) -> None:
        self.prims.append(("rect", _part(*self.box, fx1, fy1, fx2, fy2), colour, lamp, True))

    def poly(self, pts, colour) -> None:
        bx, by, bw, bh = self.box
        xy = np.array([[round(bx + fx * bw), round(by + fy * bh)] for fx, fy in pts], dtype=np.int32)
        self.prims.append(("poly", xy, colour, False, True))

    def circle(self, fx, fy, fr, colour) -> None:  # fr: radius as a fraction of the box height
        bx, by, bw, bh = self.box
        r = max(1, int(round(fr * bh)))
        centre = (int(round(bx + fx * bw)), int(round(by + fy * bh)))
        self.prims.append(("circle", (*centre, r), colour, False, True))


def _vehicle_prims(o: _Obj, box, t: float, night_lamps: bool) -> list:
    c = o.colour
    p = _Parts(*box)
    p.poly([(0.15, 0.0), (0.85, 0.0), (0.96, 0.46), (0.04, 0.46)], c)  # cabin
    if o.facing == "rear":
        p.poly([(0.2, 0.07), (0.8, 0.07), (0.88, 0.41), (0.12, 0.41)], _WINDOW)
    else:
        p.poly([(0.18, 0.05), (0.82, 0.05), (0.92, 0.43), (0.08, 0.43)], _WINDOW)
    p.rect(0.0, 0.42, 1.0, 0.86, c)  # body
    p.rect(0.02, 0.78, 0.98, 0.88, tuple(v * 0.6 for v in c))  # bumper
    p.rect(0.05, 0.86, 0.24, 1.0, _TYRE)
    p.rect(0.76, 0.86, 0.95, 1.0, _TYRE)
    if o.facing == "rear":
        p.rect(0.40, 0.62, 0.60, 0.72, (225, 225, 215))  # number plate
        braking = "brake" in o.extra and t >= o.extra["brake"]
        for fx in (0.03, 0.80):  # tail lights (bright while braking)
            p.rect(fx, 0.48, fx + 0.17, 0.60, BRAKE_RED if braking else (200, 20, 20), night_lamps or braking)
    else:
        p.rect(0.30, 0.52, 0.70, 0.68, (30, 30, 32))  # grille
        for fx in (0.04, 0.76):
            p.rect(fx, 0.50, fx + 0.20, 0.62, (250, 245, 215), night_lamps)  # headlights
    blink = o.extra.get("blink")
    if blink is not None:  # amber indicators at the outer corners: hazards or one turn signal
        lit = ((blink["freq"] * t + blink["phase"]) % 1.0) < 0.5
        for fx, side in ((0.0, blink["sides"][0]), (0.9, blink["sides"][1])):
            if side:
                p.rect(fx, 0.44, fx + 0.1, 0.56, AMBER if lit else (120, 80, 30), lit)
    return p.prims


def _ev_prims(o: _Obj, box, t: float, night_lamps: bool) -> list:
    p = _Parts(*box)
    p.rect(0.0, 0.1, 1.0, 0.88, o.colour)
    if o.facing == "rear":
        p.rect(0.10, 0.17, 0.45, 0.42, _WINDOW)
        p.rect(0.55, 0.17, 0.90, 0.42, _WINDOW)
    else:
        p.rect(0.07, 0.15, 0.93, 0.42, _WINDOW)
    band_a, band_b = o.extra["band"]
    n_sq = 6  # checkered side band
    for k in range(n_sq):
        p.rect(k / n_sq, 0.5, (k + 1) / n_sq, 0.64, band_a if k % 2 == 0 else band_b)
    p.rect(0.0, 0.80, 1.0, 0.89, (70, 70, 72))
    p.rect(0.05, 0.87, 0.24, 1.0, _TYRE)
    p.rect(0.76, 0.87, 0.95, 1.0, _TYRE)
    lamp_y = 0.66 if o.facing == "rear" else 0.68
    for fx in (0.03, 0.82):  # tail lights or headlights
        col = (200, 20, 20) if o.facing == "rear" else (250, 245, 215)
        p.rect(fx, lamp_y, fx + 0.15, lamp_y + 0.1, col, night_lamps)
    # light bar on the roof: left lamp red, right lamp blue
    p.rect(0.1, 0.07, 0.9, 0.11, (40, 40, 42))
    if o.lights == "on":
        left_lit = ((o.freq * t + o.phase) % 1.0) < 0.5  # exactly one lamp lit in every frame
        red = (_EV_RED_ON, True) if left_lit else (_EV_RED_DIM, False)
        blue = (_EV_BLUE_DIM, False) if left_lit else (_EV_BLUE_ON, True)
    else:
        red = blue = (_LAMP_OFF_GREY, False)
    p.rect(0.12, 0.0, 0.5, 0.09, *red)
    p.rect(0.5, 0.0, 0.88, 0.09, *blue)
    return p.prims


def _pedestrian_prims(o: _Obj, box, t: float) -> list:
    shirt, pants, skin = o.extra["shirt"], o.extra["pants"], o.extra["skin"]
    swing = 0.28 * np.sin(2 * np.pi * (o.freq * t + o.phase)) if o.freq > 0 else 0.0
    p = _Parts(*box)
    for x, s in ((0.36, swing), (0.64, -swing)):  # legs: hip to foot
        p.poly([(x - 0.1, 0.5), (x + 0.1, 0.5), (x + s + 0.09, 1.0), (x + s - 0.09, 1.0)], pants)
    for x, s in ((0.1, -0.6 * swing), (0.9, 0.6 * swing)):  # arms: shoulder to hand
        p.poly([(x - 0.07, 0.17), (x + 0.07, 0.17), (x + s + 0.06, 0.5), (x + s - 0.06, 0.5)], shirt)
    p.rect(0.18, 0.15, 0.82, 0.53, shirt)
    p.circle(0.5, 0.075, 0.075, skin)
    return p.prims


def _lamp_state(o: _Obj, t: float) -> int:
    """The lit lamp of a traffic light at time t (0 red, 1 amber, 2 green)."""
    switch = o.extra.get("switch")  # (time, new state): the light changes mid-clip
    return switch[1] if switch is not None and t >= switch[0] else o.state


def _traffic_light_prims(o: _Obj, cam: _Camera, X: float, Z: float, t: float) -> list:
    xc, yb = cam.x(X, Z), cam.y(Z)
    pole_w = max(1.0, cam.px(0.14, Z))
    top = yb - cam.px(o.h, Z)
    hw, hh = cam.px(0.38, Z), cam.px(1.0, Z)
    p = [("rect", (int(round(xc - pole_w / 2)), int(round(top)), int(round(xc + pole_w / 2)), int(round(yb))),
          (50, 52, 55), False, False)]
    bx, by = xc - hw / 2, top - hh
    p.append(("rect", _part(bx, by, hw, hh, 0.0, 0.0, 1.0, 1.0), o.colour, False, True))
    r = max(1, int(round(0.3 * hw)))
    state = _lamp_state(o, t)
    for k, fy in enumerate((0.18, 0.5, 0.82)):
        lit = k == state
        p.append(("circle", (int(round(bx + 0.5 * hw)), int(round(by + fy * hh)), r),
                  _TL_LIT[k] if lit else _TL_DARK, lit, True))
    return p


def _object_prims(o: _Obj, cam: _Camera, t: float, style: _Style) -> list:
    X, Z = o.at(t)
    if o.kind == "traffic_light":
        return _traffic_light_prims(o, cam, X, Z, t)
    bw, bh = cam.px(o.w, Z), cam.px(o.h, Z)
    box = (cam.x(X, Z) - bw / 2, cam.y(Z) - bh, bw, bh)
    night_lamps = style.lighting != "day"
    if o.kind == "car":
        return _vehicle_prims(o, box, t, night_lamps)
    if o.kind == "emergency_vehicle":
        return _ev_prims(o, box, t, night_lamps)
    return _pedestrian_prims(o, box, t)


def _screen_extent(o: _Obj, cam: _Camera, t: float) -> tuple[float, float, float, float]:
    """Approximate screen box (x1, y1, x2, y2) of the whole object (pole included) at time t."""
    X, Z = o.at(t)
    w = cam.px(o.w if o.kind != "traffic_light" else 0.38, Z)
    h = cam.px(o.h + (1.0 if o.kind == "traffic_light" else 0.0), Z)
    xc, yb = cam.x(X, Z), cam.y(Z)
    return xc - w / 2, yb - h, xc + w / 2, yb


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _draw(img: np.ndarray, op: str, geom, colour) -> None:
    if op == "rect":
        cv2.rectangle(img, geom[:2], geom[2:], colour, -1)
    elif op == "poly":
        cv2.fillConvexPoly(img, geom, colour)
    else:
        cv2.circle(img, geom[:2], geom[2], colour, -1)


def _sample_camera(rng: np.random.Generator, width: int, height: int) -> _Camera:
    return _Camera(
        width=width,
        height=height,
        focal=width * rng.uniform(0.85, 1.05),
        cx=width * (0.5 + rng.uniform(-0.04, 0.04)),
        horizon=height * rng.uniform(0.36, 0.46),
        cam_h=rng.uniform(1.2, 1.6),
    )


def _sample_style(rng: np.random.Generator, frames: int, width: int) -> _Style:
    lighting = LIGHTINGS[int(rng.choice(len(LIGHTINGS), p=P_LIGHTING))]
    brightness, beam, glow = {
        "day": (rng.uniform(0.85, 1.15), 0.0, 0.45),
        "dusk": (rng.uniform(0.45, 0.7), rng.uniform(0.3, 0.8), 0.8),
        "night": (rng.uniform(0.15, 0.3), rng.uniform(1.5, 3.0), 1.3),
    }[lighting]
    amp = 0.0 if rng.random() < 0.3 else rng.uniform(0.4, 1.5)
    jitter = np.clip(np.round(rng.normal(0.0, amp, size=(frames, 2))), -3, 3).astype(np.int64)
    return _Style(
        lighting=lighting,
        brightness=float(brightness),
        beam=float(beam),
        glow_gain=glow,
        glow_sigma=max(1.5, width / 110.0) * (1.5 if lighting == "night" else 1.0),
        noise_sigma=float(rng.uniform(1.0, 6.0) * (1.6 if lighting == "night" else 1.0)),
        blur_sigma=0.0 if rng.random() < 0.4 else float(rng.uniform(0.4, 1.2)),
        jitter=jitter,
        ego_speed=0.0 if rng.random() < 0.2 else float(rng.uniform(5.0, 20.0)),
        dash_phase=float(rng.uniform(0.0, 12.0)),
    )


def _beam_gain(style: _Style, cam: _Camera, x, y):
    """Multiplicative light from the ego car's headlight cone at pixel (x, y) (1 where none)."""
    if style.beam <= 0:
        return 1.0
    depth = np.clip((np.asarray(y, dtype=np.float32) - cam.horizon) / (cam.height - cam.horizon), 0.0, 1.0)
    spread = 0.45 * cam.width * depth + 2.0
    return 1.0 + style.beam * np.exp(-(((x - cam.cx) / spread) ** 2)) * depth**0.7


def _background(rng: np.random.Generator, cam: _Camera, style: _Style) -> np.ndarray:
    """Sky, horizon clutter, ground and the static road markings, lit; float32 (H, W, 3) RGB."""
    W, H = cam.width, cam.height
    yh = int(round(cam.horizon))
    jit = rng.uniform(0.85, 1.15, size=3)
    sky_top, sky_low = {
        "day": ((70, 130, 215), (185, 210, 238)),
        "dusk": ((45, 40, 100), (245, 145, 80)),
        "night": ((4, 6, 18), (22, 26, 45)),
    }[style.lighting]
    img = np.empty((H, W, 3), dtype=np.float32)
    a = np.linspace(0.0, 1.0, max(yh, 1), dtype=np.float32)[:, None, None]
    img[:yh] = (np.array(sky_top, np.float32) * (1 - a) + np.array(sky_low, np.float32) * a) * jit

    # ground: grass or dry verge, lit by the scene brightness and the ego headlight cone
    ground = np.array([(70, 110, 45), (120, 110, 70), (90, 95, 60)][int(rng.integers(3))], np.float32)
    img[yh:] = ground * rng.uniform(0.85, 1.15)
    ys = np.arange(H, dtype=np.float32)
    xs = np.arange(W, dtype=np.float32)

    def strip(X0, X1, colour):
        # polygon on the ground between lateral offsets X0..X1 (metres), from the horizon to the bottom
        yb = H + 2.0
        d = (yb - cam.horizon) / cam.cam_h  # = focal / Z at the image bottom
        pts = np.array([[cam.cx + X0 * 0.002, cam.horizon], [cam.cx + X1 * 0.002, cam.horizon],
                        [cam.cx + X1 * d, yb], [cam.cx + X0 * d, yb]])
        cv2.fillConvexPoly(img, np.round(pts).astype(np.int32), colour)

    asphalt = np.array((78, 78, 82), np.float32) * rng.uniform(0.8, 1.2)
    side = (140, 138, 132)
    strip(-SIDEWALK, -ROAD_EDGE, side)
    strip(ROAD_EDGE, SIDEWALK, side)
    strip(-ROAD_EDGE, ROAD_EDGE, tuple(float(v) for v in asphalt))
    for X in (-ROAD_EDGE + 0.2, ROAD_EDGE - 0.2):  # solid white edge lines
        strip(X - 0.08, X + 0.08, (225, 225, 220))
    for X in (-LANE_W / 2 - 0.12, -LANE_W / 2 + 0.12):  # double yellow centre line
        strip(X - 0.06, X + 0.06, (230, 190, 40))

    # low-frequency texture on the ground (patches, wear)
    tex = rng.uniform(0.85, 1.12, size=(6, 10)).astype(np.float32)
    tex = cv2.resize(tex, (W, H - yh), interpolation=cv2.INTER_CUBIC)
    light = style.brightness * _beam_gain(style, cam, xs[None, :], ys[yh:, None])
    img[yh:] *= (tex * light)[..., None]

    # haze: the ground fades into the sky colour near the horizon
    haze = np.exp(-(ys[yh:] - cam.horizon) / (0.06 * H))[:, None, None] * rng.uniform(0.3, 0.8)
    img[yh:] = img[yh:] * (1 - haze) + np.array(sky_low, np.float32) * jit * haze

    # horizon clutter: buildings and trees
    x = -rng.uniform(0, 20)
    while x < W:
        bw = rng.uniform(0.03, 0.12) * W
        if rng.random() < 0.35:  # a tree: trunk and crown
            r = rng.uniform(0.015, 0.035) * H
            col = np.array((40, 80, 40), np.float32) * style.brightness * 1.3
            cv2.circle(img, (int(x + r), int(yh - 1.6 * r)), int(r), tuple(float(v) for v in col), -1)
            cv2.rectangle(img, (int(x + r - 1), int(yh - r)), (int(x + r + 1), yh), (50, 40, 30), -1)
            x += 2 * r + rng.uniform(0, 6)
            continue
        bh = rng.uniform(0.03, 0.16) * H
        col = np.array(sky_low, np.float32) * rng.uniform(0.45, 0.75)
        cv2.rectangle(img, (int(x), int(yh - bh)), (int(x + bw), yh), tuple(float(v) for v in col), -1)
        if style.lighting == "night":  # lit windows
            for _ in range(int(rng.integers(0, 5))):
                wx, wy = x + rng.uniform(1, max(2, bw - 2)), yh - rng.uniform(1, max(2, bh - 1))
                cv2.rectangle(img, (int(wx), int(wy)), (int(wx) + 1, int(wy) + 1), (200, 170, 90), -1)
        x += bw + rng.uniform(0, 8)
    return img


def _vehicle_spot(rng: np.random.Generator) -> tuple[float, str]:
    """Lateral position and facing for a vehicle: oncoming lane, ego lane, right lane, or shoulder."""
    u = rng.random()
    if u < 0.25:
        return -LANE_W + rng.uniform(-0.4, 0.4), "front"
    if u < 0.55:
        return rng.uniform(-0.5, 0.5), "rear"
    if u < 0.85:
        return LANE_W + rng.uniform(-0.4, 0.4), "rear"
    X = (ROAD_EDGE + rng.uniform(0.4, 1.2)) * (1 if rng.random() < 0.75 else -1)  # parked on a shoulder
    return X, "rear" if rng.random() < 0.6 else "front"


class _Layout:
    """Places objects on the ground without collisions and keeps the protected objects unoccluded.

    Protected objects (the lights-ON vehicle, the engine's near car, the talking pedestrian) never
    overlap one another on screen, and no other object that may come nearer than one of them during
    the clip is allowed to overlap it.
    """

    def __init__(self, cam: _Camera, seconds: float):
        self.cam = cam
        self.seconds = seconds
        self.objs: list[_Obj] = []
        self.protected: list[_Obj] = []

    def extent(self, o: _Obj):
        """Screen box swept over the clip (union of the first and last frame; motion is slow)."""
        a, b = (_screen_extent(o, self.cam, t) for t in (0.0, self.seconds))
        return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])

    def nearest(self, o: _Obj) -> float:
        """The smallest depth the object reaches during the clip."""
        return min(o.at(0.0)[1], o.at(self.seconds)[1])

    def fits(self, o: _Obj, protect: bool = False) -> bool:
        for other in self.objs:
            if o.kind != "pedestrian" and other.kind != "pedestrian" and "occluder" not in o.extra:
                if abs(o.X - other.X) < (o.w + other.w) / 2 + 0.4 and abs(o.Z - other.Z) < 6.0:
                    return False
            elif abs(o.X - other.X) < (o.w + other.w) / 2 + 0.2 and abs(o.Z - other.Z) < 1.5:
                return False
        if self.protected:
            e = self.extent(o)
            for p in self.protected:
                if protect:  # protected objects never overlap on screen
                    if _overlap(e, self.extent(p)):
                        return False
                    continue
                # anything that may come nearer than a protected object during the clip must not cover it
                near = self.nearest(o) < max(p.at(0.0)[1], p.at(self.seconds)[1]) + 1.0
                if near and _overlap(e, self.extent(p)):
                    return False
        return True

    def add(self, o: _Obj, protect: bool = False) -> bool:
        if self.fits(o, protect):
            self.objs.append(o)
            if protect:
                self.protected.append(o)
            return True
        return False

    def inside(self, o: _Obj, margin: int) -> bool:
        """The whole object stays inside the frame (with a margin) during the clip."""
        e = self.extent(o)
        W, H = self.cam.width, self.cam.height
        return e[0] >= margin and e[2] <= W - margin and e[1] >= margin and e[3] <= H - margin

    def mostly_inside(self, o: _Obj) -> bool:
        """At least 70% of the object's width and its top stay in the frame (its feet may be cut off)."""
        e = self.extent(o)
        w = e[2] - e[0]
        seen = min(e[2], self.cam.width) - max(e[0], 0.0)
        return seen >= 0.7 * w and e[1] >= 2


def _motion(depth_mid: float, change: float, seconds: float) -> tuple[float, float]:
    """Depth at t = 0 and depth speed: ``depth_mid`` mid-clip, the depth changing by ``change``."""
    return depth_mid - change / 2.0, change / seconds


def _make_ev(
    rng: np.random.Generator, lights: str, X: float, Z: float, facing: str, vZ: float | None = None
) -> _Obj:
    # slow: a vehicle with its lights on is usually stopped or creeping (and stays easy to find); its
    # depth speed vZ comes from the scene flags when given (approach / recede / steady)
    return _Obj(
        kind="emergency_vehicle", X=X, Z=Z,
        vX=rng.uniform(-0.15, 0.15), vZ=Z * rng.uniform(-0.03, 0.03) if vZ is None else vZ,
        w=rng.uniform(2.0, 2.3), h=rng.uniform(2.5, 2.9),
        colour=tuple(float(v) for v in _EV_BODIES[rng.integers(len(_EV_BODIES))]),
        facing=facing, lights=lights, freq=rng.uniform(3.0, 4.0), phase=rng.random(),
        extra={"band": tuple(tuple(float(v) for v in c) for c in _EV_BANDS[rng.integers(len(_EV_BANDS))])},
    )


def _make_car(rng: np.random.Generator, X: float, Z: float, facing: str) -> _Obj:
    colour = _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))] * rng.uniform(0.85, 1.1)
    return _Obj(
        kind="car", X=X, Z=Z,
        vX=rng.uniform(-0.4, 0.4), vZ=Z * rng.uniform(-0.1, 0.1),
        w=rng.uniform(1.7, 1.95), h=rng.uniform(1.35, 1.6),
        colour=tuple(float(v) for v in colour),
        facing=facing,
    )


def _make_pedestrian(rng: np.random.Generator, X: float, Z: float, vX: float, vZ: float) -> _Obj:
    h = rng.uniform(1.5, 1.9)
    return _Obj(
        kind="pedestrian", X=X, Z=Z, vX=vX, vZ=vZ, w=0.3 * h, h=h, colour=(0, 0, 0),
        freq=(1.8 if (vX or vZ) else 0.0), phase=rng.random(),
        extra={"shirt": tuple(float(v) for v in _SHIRTS[rng.integers(len(_SHIRTS))]),
               "pants": tuple(float(v) for v in _PANTS[rng.integers(len(_PANTS))]),
               "skin": tuple(float(v) for v in _SKIN[rng.integers(len(_SKIN))])},
    )


def _lane_spot(rng: np.random.Generator) -> tuple[float, str]:
    """Lateral position and facing for a moving car: oncoming lane, ego lane or right lane."""
    u = rng.random()
    if u < 0.25:
        return -LANE_W + rng.uniform(-0.4, 0.4), "front"
    if u < 0.6:
        return rng.uniform(-0.6, 0.6), "rear"
    return LANE_W + rng.uniform(-0.4, 0.4), "rear"


def _near_car(rng: np.random.Generator, depth_mid: float, seconds: float) -> _Obj:
    X, facing = _lane_spot(rng)
    Z, vZ = _motion(depth_mid, rng.uniform(-0.5, 0.5), seconds)
    car = _make_car(rng, X, Z, facing)
    car.vX, car.vZ = rng.uniform(-0.2, 0.2), vZ
    return car


def _near_pedestrian(rng: np.random.Generator, cam: _Camera, depth_mid: float, seconds: float) -> _Obj:
    # On the sidewalk or the kerb if that is in view at this depth, else crossing the road.
    reach = (min(cam.cx, cam.width - cam.cx) - 12.0) * depth_mid / cam.focal  # |X| that stays in view
    if reach > ROAD_EDGE + 0.6 and rng.random() < 0.6:
        X = rng.choice([-1.0, 1.0]) * rng.uniform(ROAD_EDGE + 0.3, min(SIDEWALK - 0.3, reach))
        change = 0.0 if rng.random() < 0.4 else rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.2) * seconds
        Z, vZ = _motion(depth_mid, change, seconds)
        return _make_pedestrian(rng, X, Z, 0.0, vZ)
    X = rng.uniform(-min(ROAD_EDGE, reach), min(ROAD_EDGE, reach))
    vX = 0.0 if rng.random() < 0.3 else rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.4)
    return _make_pedestrian(rng, X - vX * seconds / 2, depth_mid, vX, 0.0)


def _place_protected(flags: SceneFlags, rng: np.random.Generator, lay: _Layout) -> None:
    """Place the lights-ON vehicle, the near car and the near pedestrian where the flags put them.

    Their depths and depth motion come from the flags (the audio follows the same numbers); only
    their lateral spots are searched, jointly, so that all of them are in view and unoccluded.
    """
    seconds, margin = lay.seconds, 4
    for attempt in range(40):
        lay.objs.clear()
        lay.protected.clear()
        last = attempt == 39
        if flags.lights_on_ev:
            Z, vZ = _motion(flags.ev_distance_m, flags.ev_depth_change_m, seconds)
            for k in range(12):
                if last and k == 11:  # straight ahead in the ego lane: in view at any allowed depth
                    X, facing = rng.uniform(-0.3, 0.3), "rear"
                else:
                    X, facing = _vehicle_spot(rng)
                ev = _make_ev(rng, "on", X, Z, facing, vZ)
                ev.extra["role"] = "lights_on_ev"
                if lay.inside(ev, margin) and lay.add(ev, protect=True):
                    break
            else:
                if not last:
                    continue
                lay.objs.append(ev)  # first on an empty layout: nothing can cover it
                lay.protected.append(ev)
        if flags.engine:
            for _ in range(12):
                car = _near_car(rng, flags.near_car_m, seconds)
                car.extra["role"] = "near_car"
                if lay.mostly_inside(car) and lay.add(car, protect=True):
                    break
            else:
                if not last:
                    continue
                # give up on "unoccluded": keep it in view, behind nothing that covers the vehicle
                lay.objs.append(car)
        if flags.speech:
            for _ in range(12):
                ped = _near_pedestrian(rng, lay.cam, flags.near_pedestrian_m, seconds)
                ped.extra["role"] = "near_pedestrian"
                if lay.mostly_inside(ped) and lay.add(ped, protect=True):
                    break
            else:
                if not last:
                    continue
                lay.objs.append(ped)
        return


def _layout(flags: SceneFlags, rng: np.random.Generator, cam: _Camera, seconds: float) -> list[_Obj]:
    lay = _Layout(cam, seconds)
    _place_protected(flags, rng, lay)
    tries = 30
    if flags.lights_off_ev:
        for _ in range(tries):
            X, facing = _vehicle_spot(rng)
            if lay.add(_make_ev(rng, "off", X, rng.uniform(6.0, 45.0), facing)):
                break
    far_car = FAR_CAR_MIN_M
    for _ in range(flags.cars):
        for _ in range(tries):
            targets = [o for o in lay.objs if o not in lay.protected and o.Z > far_car + 3.5]
            if targets and rng.random() < P_OCCLUDER:
                # deliberately in front of another object, shifted sideways so it hides part of it
                tgt = targets[int(rng.integers(len(targets)))]
                Z = tgt.Z - rng.uniform(3.5, 9.0)
                shift = rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 0.9) * tgt.w
                facing = "rear" if tgt.X > -LANE_W / 2 else "front"
                car = _make_car(rng, (tgt.X + shift) * Z / tgt.Z, Z, facing)
                car.extra["occluder"] = True
            else:
                X, facing = _vehicle_spot(rng)
                car = _make_car(rng, X, rng.uniform(far_car * 1.1 + 0.1, 55.0), facing)
            if lay.nearest(car) >= far_car and lay.add(car):
                break
    for _ in range(flags.pedestrians):
        for _ in range(tries):
            if rng.random() < 0.3:  # crossing
                X, Z = rng.uniform(-ROAD_EDGE, ROAD_EDGE), rng.uniform(FAR_PEDESTRIAN_MIN_M, 28.0)
                vX, vZ = rng.choice([-1.0, 1.0]) * rng.uniform(0.8, 1.6), 0.0
            else:
                X = rng.choice([-1.0, 1.0]) * rng.uniform(ROAD_EDGE + 0.4, SIDEWALK - 0.3)
                Z = rng.uniform(FAR_PEDESTRIAN_MIN_M + 1.5, 40.0)
                vX, vZ = 0.0, (0.0 if rng.random() < 0.3 else rng.choice([-1.0, 1.0]) * rng.uniform(0.8, 1.5))
            ped = _make_pedestrian(rng, X, Z, vX, vZ)
            if lay.nearest(ped) >= FAR_PEDESTRIAN_MIN_M and lay.add(ped):
                break
    for _ in range(flags.traffic_lights):
        for _ in range(tries):
            X = rng.choice([-1.0, 1.0]) * rng.uniform(ROAD_EDGE + 0.5, SIDEWALK)
            housing = (35, 35, 35) if rng.random() < 0.7 else (170, 140, 30)
            tl = _Obj(kind="traffic_light", X=X, Z=rng.uniform(9.0, 50.0), vX=0.0, vZ=0.0, w=0.38,
                      h=rng.uniform(3.2, 4.5), colour=housing, state=int(rng.integers(3)))
            if lay.add(tl):
                break
    return lay.objs


def _shade(colour, s: float):
    return (min(colour[0] * s, 255.0), min(colour[1] * s, 255.0), min(colour[2] * s, 255.0))


def _draw_frame(
    bg: np.ndarray, objs: list[_Obj], cam: _Camera, style: _Style, t: float, glow: np.ndarray, signs: list
) -> tuple[np.ndarray, list[list]]:
    """Draw one frame (before jitter, blur and noise): float32 (H, W, 3) and each object's primitives."""
    img = bg.copy()
    # dashed lane line between the ego lane and the right lane, moving toward the camera
    period, length = 12.0, 3.0
    offset = (style.dash_phase + style.ego_speed * t) % period
    z0 = cam.focal * cam.cam_h / (cam.height + 2 - cam.horizon)  # depth at the image bottom
    for k in range(12):
        za = z0 + k * period - offset
        zb = za + length
        if zb <= z0 * 0.8:
            continue
        za = max(za, z0 * 0.8)
        X = LANE_W / 2
        pts = np.array([[cam.x(X - 0.07, za), cam.y(za)], [cam.x(X + 0.07, za), cam.y(za)],
                        [cam.x(X + 0.07, zb), cam.y(zb)], [cam.x(X - 0.07, zb), cam.y(zb)]])
        s = style.brightness * float(_beam_gain(style, cam, pts[0, 0], pts[0, 1]))
        cv2.fillConvexPoly(img, np.round(pts).astype(np.int32), _shade((225, 225, 220), s))
    glow[...] = 0.0
    draw_signs(img, glow, signs, t, style.brightness)  # roadside signs and reflections, behind every object
    all_prims = []
    for o in objs:  # far to near
        X, Z = o.at(t)
        s = style.brightness * float(_beam_gain(style, cam, cam.x(X, Z), cam.y(Z)))
        prims = _object_prims(o, cam, t, style)
        all_prims.append(prims)
        for op, geom, colour, emissive, _ in prims:
            _draw(img, op, geom, colour if emissive else _shade(colour, s))
            _draw(glow, op, geom, colour if emissive else (0.0, 0.0, 0.0))
    return img, all_prims


def _finish(
    img: np.ndarray, glow: np.ndarray, style: _Style, jitter, noise: np.ndarray, noise_off, weather: dict,
    frame: int,
) -> np.ndarray:
    """Add lamp glow, weather, camera shake, optical blur and sensor noise; uint8 (H, W, 3)."""
    H, W = img.shape[:2]
    img = apply_weather(img, weather, frame, glow)  # before the glow: an underexposed lamp still glows
    img += style.glow_gain * cv2.GaussianBlur(glow, (0, 0), style.glow_sigma)
    dx, dy = int(jitter[0]), int(jitter[1])
    if dx or dy:
        shift = np.float32([[1, 0, dx], [0, 1, dy]])
        img = cv2.warpAffine(img, shift, (W, H), borderMode=cv2.BORDER_REPLICATE)
    if style.blur_sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), style.blur_sigma)
    oy, ox = noise_off
    img += noise[oy : oy + H, ox : ox + W]
    return np.clip(img, 0.0, 255.0).astype(np.uint8)


def _own_box(prims: list, jitter, W: int, H: int) -> list[int] | None:
    """The box of one object's boxed primitives alone (no occlusion), shifted by the jitter and clipped."""
    alone = np.zeros((H, W), np.uint8)
    for op, geom, _, _, boxed in prims:
        if boxed:
            _draw(alone, op, geom, 1)
    cols = np.flatnonzero(alone.any(axis=0))
    if cols.size == 0:
        return None
    rows = np.flatnonzero(alone.any(axis=1))
    dx, dy = int(jitter[0]), int(jitter[1])
    x1, x2 = (min(max(v + dx, 0), W) for v in (int(cols[0]), int(cols[-1]) + 1))
    y1, y2 = (min(max(v + dy, 0), H) for v in (int(rows[0]), int(rows[-1]) + 1))
    return [x1, y1, x2, y2]


def _boxes(objs: list[_Obj], prims: list[list], jitter, W: int, H: int) -> list[tuple[str, list[int], int]]:
    """Boxes of the visible objects in a frame: (label, [x1, y1, x2, y2], object index)."""
    scene = np.zeros((H, W), np.uint8)  # who owns each pixel (255: a pole)
    for i, ps in enumerate(prims):
        for op, geom, _, _, boxed in ps:
            _draw(scene, op, geom, i + 1 if boxed else 255)
    owned = np.bincount(scene.ravel(), minlength=len(objs) + 2)
    out = []
    alone = np.zeros((H, W), np.uint8)
    dx, dy = int(jitter[0]), int(jitter[1])
    for i, (o, ps) in enumerate(zip(objs, prims)):
        alone[...] = 0
        for op, geom, _, _, boxed in ps:
            if boxed:
                _draw(alone, op, geom, 1)
        cols = np.flatnonzero(alone.any(axis=0))
        if cols.size == 0:
            continue  # off screen
        rows = np.flatnonzero(alone.any(axis=1))
        own = np.count_nonzero(alone)
        if owned[i + 1] < MIN_VISIBLE * own:
            continue  # mostly hidden behind nearer objects
        x1 = min(max(int(cols[0]) + dx, 0), W)
        x2 = min(max(int(cols[-1]) + 1 + dx, 0), W)
        y1 = min(max(int(rows[0]) + dy, 0), H)
        y2 = min(max(int(rows[-1]) + 1 + dy, 0), H)
        if x2 - x1 < MIN_BOX_PX or y2 - y1 < MIN_BOX_PX:
            continue
        out.append((o.kind, [x1, y1, x2, y2], i))
    return out


def render_video(
    flags: SceneFlags,
    rng: np.random.Generator,
    *,
    width: int = 320,
    height: int = 192,
    fps: float = 12.0,
    seconds: float = 1.0,
) -> tuple[np.ndarray, list[tuple[str, list[int]]], VideoInfo]:
    """Render the camera clip of one scene.

    Args:
        flags: the scene's latent decisions (which objects to place, emergency vehicle lights).
        rng: the generator for the video of this sample (consumed).
        width, height: frame size in pixels.
        fps: frames per second; the clip has ``max(1, round(seconds * fps))`` frames.
        seconds: clip length.

    Returns:
        ``(frames, boxes, info)``: ``frames`` uint8 ``(T, H, W, 3)`` **RGB**; ``boxes`` a list of
        ``(label, [x1, y1, x2, y2])`` for the last frame in pixels (x2, y2 exclusive), label one of
        ``OBJECTS``; ``info`` the lighting and the lights-ON emergency vehicle's box.
    """
    T = max(1, int(round(seconds * fps)))
    if flags.non_road:  # a screen, a test pattern, noise: no object, so no box
        frames, pattern = render_non_road(rng, T, height, width, fps)
        return frames, [], VideoInfo(lighting="none", lights_on_ev_box=None,
                                     objects_placed={k: 0 for k in OBJECTS}, view=pattern)
    cam = _sample_camera(rng, width, height)
    style = _sample_style(rng, T, width)
    bg = _background(rng, cam, style)
    objs = _layout(flags, rng, cam, seconds)
    t_last = (T - 1) / fps
    objs.sort(key=lambda o: -o.at(t_last)[1])  # far to near (depth order of the last frame)
    pad = 8
    noise = rng.normal(0.0, style.noise_sigma, size=(height + pad, width + pad, 3)).astype(np.float32)
    noise_offsets = rng.integers(0, pad + 1, size=(T, 2))
    # drawn last, so the layout and the look of a scene do not depend on them
    weather = sample_weather(rng, width, height)
    decoys, signs = (place_decoys(rng, objs, width, height, cam.horizon, seconds)
                     if flags.decoy_lights else ([], []))
    glow = np.zeros((height, width, 3), np.float32)
    frames = np.empty((T, height, width, 3), np.uint8)
    prims = []
    ev_first = None
    for k in range(T):
        t = k / fps
        img, prims = _draw_frame(bg, objs, cam, style, t, glow, signs)
        frames[k] = _finish(img, glow, style, style.jitter[k], noise, noise_offsets[k], weather, k)
        if k == 0:
            ev_first = next((_own_box(ps, style.jitter[0], width, height)
                             for o, ps in zip(objs, prims) if o.lights == "on"), None)
    boxes = _boxes(objs, prims, style.jitter[-1], width, height)
    role = {objs[i].extra.get("role"): b for _, b, i in boxes}
    info = VideoInfo(
        lighting=style.lighting,
        lights_on_ev_box=role.get("lights_on_ev"),
        objects_placed={k: sum(o.kind == k for o in objs) for k in OBJECTS},
        lights_on_ev_box_first=ev_first if role.get("lights_on_ev") is not None else None,
        near_car_box=role.get("near_car"),
        near_pedestrian_box=role.get("near_pedestrian"),
        decoys=decoys,
        weather=weather["kind"],
        traffic_lights=[{"box": b, "state": TL_STATES[_lamp_state(objs[i], t_last)]}
                        for label, b, i in boxes if label == "traffic_light"],
    )
    return frames, [(label, b) for label, b, _ in boxes], info

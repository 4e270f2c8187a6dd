"""Procedural dynamic scenes with exact ground truth: the demo, the test fixture and the
scene-variety suite.

A scene is a set of textured primitives, boxes and spheres, ray-cast analytically (slab method
in each box's local frame, the quadratic for spheres), each with its own rigid pose over the
clip. A few keys of :class:`~nsff_core.config.SyntheticConfig` pick the scene:

- ``layout``: ``boxes`` is the demo's fixed room: a back wall (z ~ 9.6 m), a floor 1.2 m below
  the camera, five static boxes and panels at 2.6-6.8 m. ``mixed`` is a room (floor, back and
  side walls) holding about ten static objects laid out from the seed: spheres on the floor and
  in the air, boxes, tilted slabs and pillars, kept off the movers' paths.
- ``texture``: ``smooth`` (large soft blobs and gentle gradients, wide featureless areas),
  ``medium`` (the demo's: fractal noise from 2 texels up plus discs and rectangles) or ``high``
  (texel-level noise and many small shapes, with smaller texels).
- ``movers`` (0 to 3): ``cube`` (the demo's 0.6 m cube at ~3.3 m that falls, bobs in depth and
  tumbles), ``sphere`` (a ball that bounces diagonally across the floor and spins), ``box``
  (slides over the floor towards the camera and turns), ``walker`` (an articulated figure of six
  rigid parts, torso, head, arms and legs swinging, walking across), ``stop`` (a ball rolling
  over the floor that stops dead for the middle 30 % of the clip), ``epipolar`` (a box sliding
  back and forth along the camera's translation without turning: on a straight camera path its
  flow lies exactly on the epipolar lines of the camera motion). Every part moves rigidly, so
  the flow of a non-rigid ensemble (the walker) is still exact.
- ``camera``: ``sweep`` (the demo's: ~1.3 m sideways with a slight forward arc and a small
  roll, looking at the scene centre), ``sideways`` (1.4 m straight along x, panning
  +-6 degrees to keep the scene centred), ``dolly`` (1.4 m straight forward, gently panning and
  tilting by a few degrees), ``arc`` (20 degree
  orbit of radius 5 m about the scene centre), ``handheld`` (a sideways walk with centimetre
  position jitter and 1-2 degree rotation jitter of a few cycles per clip), ``walk`` (a
  hand-held walk 1 m forward: a step's sway and bob, a wandering gaze and the same rotation
  jitter).
- ``degrade``: applied to the source video frames only (:func:`source_frames`); every ground
  truth array, ``images`` included, stays clean. ``blur`` (motion blur over a 180 degree
  shutter, along each pixel's true motion), ``noise`` (signal-dependent sensor noise), ``jpeg70``
  (JPEG compression at quality 70).

:data:`SUITE_PRESETS` lists the suite's variants (``config.yaml`` repeats them under
``synthetic``); :func:`suite_config` builds one at any size.

Conventions (shared by rendering, depth, flow and the cameras):

- World and camera frames use OpenCV axes: x right, y down, z forward; units are metres.
  ``c2w`` (4, 4) maps camera to world coordinates.
- Pixel ``(x, y)`` (column, row) is the unit square centred on the continuous image coordinate
  ``(x, y)``: integer coordinates are pixel centres. The ray of pixel ``(x, y)`` is
  ``K^-1 (x, y, 1)``. ``K`` has ``fx = fy`` from a 60 degree horizontal field of view and the
  principal point at the image centre, ``((W - 1) / 2, (H - 1) / 2)`` (the same point as
  COLMAP's ``(W / 2, H / 2)``, which puts pixel centres at half-integers). ``render_scene(cfg,
  size=(w, h))`` samples the same cameras on another pixel grid (``K`` scaled exactly, edges
  fixed), e.g. the ground truth at a workflow's training size.
- Depth is the camera-frame z (not the ray length), in metres.
- Flow is in pixels, ``(u, v)`` along ``(x, y)``: the surface point seen at pixel ``p`` of the
  source frame is at continuous coordinate ``p + flow`` in the target frame (whether or not it is
  visible there). ``flow_fw[i]`` goes from frame ``i`` to ``i + 1``; ``flow_bw[i]`` from frame
  ``i + 1`` to ``i``.
- ``dynamic_mask`` is True where the pixel centre's first hit is a part of a mover, in every
  frame (a ``stop`` ball stays dynamic while it rests).
- Time: frame ``t`` of ``N`` has clip phase ``s = t / (N - 1)`` in [0, 1]; the camera path and the
  object motion span the clip whatever ``N`` is, and the geometry does not depend on the image
  size (the camera is defined by its field of view).

Colour is one mip-mapped (trilinear) texture lookup per pixel, filtered to the pixel's
footprint, and 2x2 supersampling on pixels next to silhouettes and box edges, so images are
anti-aliased at any resolution; depth, mask and flow come from the single ray through each pixel
centre. Shading is baked into the textures (Lambertian, light fixed to each object), so a
surface point keeps its colour as it moves: brightness constancy holds up to texture filtering.
A sphere's texture is a cube map (the six faces of its bounding cube, projected radially) whose
texels are evaluated from 3-D noise at their points on the sphere, so it has no seams.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from nsff_core.config import SyntheticConfig

from .cameras import project, scale_intrinsics
from .io import atomic_file, write_video

#: horizontal field of view of the camera, degrees
HFOV_DEG = 60.0
#: colour samples per pixel along each image axis
SUPERSAMPLE = 2
#: other two local axes of a face, by the face's normal axis: (u axis, v axis)
_FACE_AXES = np.array([[1, 2], [0, 2], [0, 1]])
#: rays per intersection chunk (bounds memory: a few (boxes, chunk, 3) float arrays)
_CHUNK = 1 << 15

#: values of the scene keys of SyntheticConfig (the config schema repeats them as enums)
LAYOUTS = ("boxes", "mixed")
TEXTURES = ("smooth", "medium", "high")
MOVERS = ("cube", "sphere", "box", "walker", "stop", "epipolar")
CAMERAS = ("sweep", "sideways", "dolly", "arc", "handheld", "walk")
DEGRADATIONS = ("blur", "noise", "jpeg70")
#: most movers in one scene
MAX_MOVERS = 3

#: the scene-variety suite: preset name -> SyntheticConfig keys (854x480, 24 frames, 10 fps).
#: Together the variants cover every texture, mover, camera path and degradation at least once.
SUITE_PRESETS: dict[str, dict] = {
    "suite_ball": dict(texture="smooth", movers=["sphere"], camera="sideways", seed=1),
    "suite_walker": dict(
        texture="smooth", movers=["walker"], camera="arc", degrade=["noise"], seed=2
    ),
    "suite_dolly": dict(texture="high", movers=["box"], camera="dolly", seed=3),
    "suite_pair": dict(
        texture="medium", movers=["sphere", "box"], camera="arc", degrade=["blur"], seed=4
    ),
    "suite_stop": dict(
        texture="high", movers=["stop"], camera="sideways", degrade=["jpeg70"], seed=5
    ),
    "suite_epipolar": dict(texture="medium", movers=["epipolar"], camera="sideways", seed=6),
    # a camera walking into the scene: the far wall grows in the image (static_last_delta: auto)
    "suite_walk": dict(
        texture="medium", movers=["sphere", "stop"], camera="walk", degrade=["noise"], seed=8
    ),
    "suite_phone": dict(
        texture="medium",
        movers=["walker"],
        camera="handheld",
        degrade=["blur", "noise", "jpeg70"],
        seed=7,
    ),
}
#: keys shared by every suite preset
SUITE_COMMON: dict = dict(num_frames=24, width=854, height=480, fps=10.0, layout="mixed")


def suite_config(name: str, **overrides) -> SyntheticConfig:
    """The :class:`SyntheticConfig` of suite preset ``name`` (a key of :data:`SUITE_PRESETS`),
    with keyword overrides (e.g. ``width=160, height=90, novel_offsets=()`` for a quick test)."""
    from nsff_core.config import stage_config

    if name not in SUITE_PRESETS:
        raise ValueError(f"unknown suite preset {name!r}; presets: {sorted(SUITE_PRESETS)}")
    return stage_config("synthetic", {**SUITE_COMMON, **SUITE_PRESETS[name], **overrides})


# --------------------------------------------------------------------------- result container


@dataclass
class SyntheticScene:
    """A rendered synthetic clip and its ground truth (N frames, V novel views per frame).

    Attributes:
        images: (N, H, W, 3) uint8 RGB training frames (clean: without ``cfg.degrade``).
        K: (3, 3) float64 pinhole intrinsics in pixels (shared by all cameras).
        c2w: (N, 4, 4) float64 camera-to-world poses, OpenCV axes, metres.
        depth: (N, H, W) float32 camera-frame z of the surface at each pixel centre, metres.
        dynamic_mask: (N, H, W) bool, True where the pixel centre's first hit is a mover.
        flow_fw: (N-1, H, W, 2) float32 flow from frame i to i+1, pixels.
        flow_bw: (N-1, H, W, 2) float32 flow from frame i+1 to i, pixels.
        novel_images: (N, V, H, W, 3) uint8 held-out views at the training times.
        novel_c2w: (N, V, 4, 4) float64 poses of the held-out views.
        novel_offsets: (V, 3) float64 offsets of the held-out views in the training camera frame.
        object_poses: (N, M, 4, 4) float64 object-to-world poses of the M moving parts (one per
            rigid part: the walker has six).
        fps: frames per second of the clip.
    """

    images: np.ndarray
    K: np.ndarray
    c2w: np.ndarray
    depth: np.ndarray
    dynamic_mask: np.ndarray
    flow_fw: np.ndarray
    flow_bw: np.ndarray
    novel_images: np.ndarray
    novel_c2w: np.ndarray
    novel_offsets: np.ndarray
    object_poses: np.ndarray
    fps: float

    @property
    def num_frames(self) -> int:
        return int(self.images.shape[0])

    @property
    def hw(self) -> tuple[int, int]:
        """Image size (height, width) in pixels."""
        return int(self.images.shape[1]), int(self.images.shape[2])


# --------------------------------------------------------------------------- camera geometry


def intrinsics(width: int, height: int, hfov_deg: float = HFOV_DEG) -> np.ndarray:
    """Pinhole K (3, 3) with fx = fy from the horizontal FOV; principal point ((W-1)/2, (H-1)/2)."""
    f = 0.5 * width / math.tan(math.radians(hfov_deg) / 2)
    return np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]], np.float64)


def rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation matrix (3, 3) of ``angle`` radians about ``axis`` (any length), right-handed."""
    a = np.asarray(axis, np.float64)
    a = a / np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def look_at(eye: np.ndarray, target: np.ndarray, roll: float = 0.0) -> np.ndarray:
    """c2w (4, 4) of a camera at ``eye`` looking at ``target`` (world y is down), rolled by
    ``roll`` radians about its optical axis."""
    eye = np.asarray(eye, np.float64)
    z = np.asarray(target, np.float64) - eye
    z /= np.linalg.norm(z)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([x, y, z], axis=1) @ rotation([0, 0, 1], roll)
    c2w[:3, 3] = eye
    return c2w


def camera_pose(s: float) -> np.ndarray:
    """Training camera c2w (4, 4) of the demo's path (``camera: sweep``) at clip phase ``s`` in
    [0, 1]: a 1.3 m sideways sweep (left to right) with a 0.3 m forward drift plus a 0.1 m
    forward arc, +-1.5 degree roll, looking at the scene centre (0.1, 0.2, 5.0)."""
    eye = np.array([0.65 * (2 * s - 1), 0.0, 0.3 * s + 0.1 * math.sin(math.pi * s)])
    roll = math.radians(1.5) * math.sin(2 * math.pi * s)
    return look_at(eye, [0.1, 0.2, 5.0], roll)


def _jitter(rng: np.random.Generator, count: int) -> Callable[[float], np.ndarray]:
    """``count`` smooth random signals of clip phase, each in [-1, 1]: sums of three sinusoids
    of 1 to 4.5 cycles per clip with random phases and weights."""
    freq = rng.uniform(1.0, 4.5, (count, 3))
    phase = rng.uniform(0, 2 * math.pi, (count, 3))
    weight = rng.uniform(0.5, 1.0, (count, 3))
    weight /= weight.sum(axis=1, keepdims=True)
    return lambda s: (weight * np.sin(2 * math.pi * freq * s + phase)).sum(axis=1)


def camera_path(name: str, seed: int = 0) -> Callable[[float], np.ndarray]:
    """The training camera's c2w (4, 4) as a function of clip phase ``s`` in [0, 1], for the
    path ``name`` (one of :data:`CAMERAS`; only ``handheld`` and ``walk`` depend on ``seed``)."""
    if name == "sweep":
        return camera_pose
    if name == "sideways":  # straight along x, 1.4 m, panning +-6 degrees to keep the centre
        return lambda s: look_at([0.7 * (2 * s - 1), 0.0, 0.0], [0.0, 0.2, 6.5])
    if name == "dolly":  # straight forward, 1.4 m, gently panning (+-4 deg) and tilting (2 deg)

        def dolly(s: float) -> np.ndarray:
            target = [0.05 + 0.35 * math.sin(2 * math.pi * s), 0.25 - 0.15 * math.sin(math.pi * s)]
            return look_at([0.05, 0.0, -0.4 + 1.4 * s], [*target, 5.0])

        return dolly
    if name == "arc":  # 20 degree orbit of radius 5 m about the scene centre

        def arc(s: float) -> np.ndarray:
            a = math.radians(10.0) * (2 * s - 1)
            return look_at([5 * math.sin(a), 0.0, 5 - 5 * math.cos(a)], [0.0, 0.2, 5.0])

        return arc
    if name == "handheld":  # a sideways walk, +-2 cm position and 1-2 degree rotation jitter
        jit = _jitter(np.random.default_rng([seed, 4]), 6)

        def handheld(s: float) -> np.ndarray:
            j = jit(s)
            eye = np.array([0.6 * (2 * s - 1), 0.0, 0.12 * s]) + 0.02 * j[:3]
            c2w = look_at(eye, [0.0, 0.2, 5.0], math.radians(2.0) * j[5])
            shake = rotation([1, 0, 0], math.radians(1.2) * j[3]) @ rotation(
                [0, 1, 0], math.radians(1.5) * j[4]
            )
            c2w[:3, :3] = c2w[:3, :3] @ shake
            return c2w

        return handheld
    if name == "walk":  # 1 m forward on foot: sway, bob, a wandering gaze, rotation jitter
        jit = _jitter(np.random.default_rng([seed, 6]), 6)

        def walk(s: float) -> np.ndarray:
            j = jit(s)
            step = 2 * math.pi * 3.0 * s  # three strides over the clip
            eye = np.array([0.05 * math.sin(step), 0.02 * math.sin(2 * step), -0.4 + 1.0 * s])
            target = [0.3 * j[0], 0.2 + 0.1 * j[1], 5.5]
            c2w = look_at(eye + 0.01 * j[2:5], target, math.radians(1.5) * j[5])
            shake = rotation([1, 0, 0], math.radians(1.0) * j[3]) @ rotation(
                [0, 1, 0], math.radians(1.0) * j[4]
            )
            c2w[:3, :3] = c2w[:3, :3] @ shake
            return c2w

        return walk
    raise ValueError(f"unknown camera path {name!r}; paths: {CAMERAS}")


def offset_pose(c2w: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """c2w (4, 4) moved by ``offset`` (3,) metres expressed in its own camera frame."""
    out = np.array(c2w, np.float64)
    out[:3, 3] += out[:3, :3] @ np.asarray(offset, np.float64)
    return out


def pixel_grid(height: int, width: int) -> np.ndarray:
    """Pixel-centre coordinates (H, W, 2) float64, (x, y) order."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([x, y], axis=-1)


def backproject(depth: np.ndarray, K: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """World points (H, W, 3) float64 of a z-depth map (H, W) seen by camera ``c2w`` (4, 4)."""
    p = pixel_grid(*depth.shape)
    xy = (p - K[:2, 2]) / np.diag(K)[:2]
    cam = np.concatenate([xy, np.ones_like(xy[..., :1])], axis=-1) * depth[..., None]
    return cam @ c2w[:3, :3].T + c2w[:3, 3]


# --------------------------------------------------------------------------- scene layout

#: primitive kinds
BOX, SPHERE = 0, 1
#: height of the floor's top (world y is down; the camera is at y = 0)
FLOOR_Y = 1.2


@dataclass(frozen=True)
class _Box:
    """A static box: centre (m), half sizes (m), yaw about the world y axis (deg), texel (m)."""

    centre: tuple[float, float, float]
    half: tuple[float, float, float]
    yaw: float
    texel: float


#: static geometry; world y is down and the floor's top is at y = 1.2 (camera height 1.2 m)
_STATIC_BOXES = (
    _Box((0.0, 1.3, 5.75), (8.0, 0.1, 3.75), 0.0, 0.012),  # floor, z 2 .. 9.5
    _Box((0.0, -1.5, 9.7), (9.0, 4.5, 0.1), 0.0, 0.02),  # back wall, front face z = 9.6
    _Box((-1.8, -0.3, 4.6), (0.35, 1.5, 0.35), 20.0, 0.008),  # pillar, left
    _Box((1.5, 0.75, 2.9), (0.4, 0.45, 0.4), -25.0, 0.005),  # crate on the floor, right
    _Box((1.3, -0.5, 6.2), (0.8, 0.5, 0.06), -15.0, 0.01),  # floating panel, right, far
    _Box((-0.5, 0.6, 6.8), (0.55, 0.6, 0.55), 35.0, 0.01),  # box on the floor, back
    _Box((-1.05, 0.95, 2.6), (0.25, 0.25, 0.25), 10.0, 0.005),  # small block, left, near
)
#: half size (m) and texel (m) of the moving cube
_CUBE_HALF = 0.27
_CUBE_TEXEL = 0.004


@dataclass(frozen=True)
class _Motion:
    """Rigid motion of the moving cube over the clip (s in [0, 1]); metres and radians."""

    x: float
    y0: float
    y1: float
    z: float
    z_amp: float
    z_phase: float
    axis: tuple[float, float, float]
    angle0: float
    angle_span: float


def _motion(seed: int) -> _Motion:
    """Seed-dependent motion of the cube: falls ~0.6 m, bobs +-0.15 m in depth, turns ~110 deg."""
    rng = np.random.default_rng([seed, 1])
    j = rng.uniform(-1, 1, 8)
    axis = np.array([0.3, 1.0, 0.25]) + 0.15 * j[3:6]
    return _Motion(
        x=0.15 + 0.08 * j[0],
        y0=-0.2 + 0.04 * j[1],
        y1=0.4 + 0.04 * j[2],
        z=3.3,
        z_amp=0.15,
        z_phase=math.pi * j[6],
        axis=tuple(float(a) for a in axis),
        angle0=float(rng.uniform(0, 2 * math.pi)),
        angle_span=math.radians(110.0) * (1 + 0.1 * j[7]),
    )


def object_pose(m: _Motion, s: float) -> np.ndarray:
    """Object-to-world pose (4, 4) of the moving cube at clip phase ``s``."""
    pose = np.eye(4)
    pose[:3, :3] = rotation(m.axis, m.angle0 + m.angle_span * s)
    z = m.z + m.z_amp * math.sin(2 * math.pi * s + m.z_phase)
    pose[:3, 3] = [m.x, m.y0 + (m.y1 - m.y0) * s, z]
    return pose


def _static_pose(box: _Box) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = rotation([0, 1, 0], math.radians(box.yaw))
    pose[:3, 3] = box.centre
    return pose


def _pose(rot: np.ndarray, centre) -> np.ndarray:
    pose = np.eye(4)
    pose[:3, :3] = rot
    pose[:3, 3] = centre
    return pose


@dataclass(frozen=True)
class Layout:
    """All primitives of a scene (static first, then the movers' parts), B in all.

    Attributes:
        kind: (B,) int64, :data:`BOX` or :data:`SPHERE`.
        half: (B, 3) float64 half sizes of a box, or the radius three times for a sphere, m.
        texel: (B,) float64 level-0 texel size, m.
        dynamic: (B,) bool, True for the movers' parts.
        hidden: (B, 3, 2) bool, faces (normal axis, side) no camera sees (given a flat texture).
        static_poses: (S, 4, 4) float64 object-to-world poses of the static primitives.
        mover_poses: clip phase s -> (B - S, 4, 4) object-to-world poses of the movers' parts.
        texture: texture style (one of :data:`TEXTURES`).
    """

    kind: np.ndarray
    half: np.ndarray
    texel: np.ndarray
    dynamic: np.ndarray
    hidden: np.ndarray
    static_poses: np.ndarray
    mover_poses: Callable[[float], np.ndarray]
    texture: str = "medium"

    def poses(self, s: float) -> np.ndarray:
        """Object-to-world poses (B, 4, 4) at clip phase ``s``."""
        return np.concatenate([self.static_poses, self.mover_poses(s)])


#: texel size factor of each texture style (smaller texels = more detail per pixel)
_TEXEL_SCALE = {"smooth": 1.5, "medium": 1.0, "high": 0.7}
#: widest cube map of a sphere, texels
_SPHERE_MAP = 192
#: where the movers start from, by the number of movers: (x, z) in metres
_ANCHORS = {
    1: [(0.0, 4.2)],
    2: [(-0.9, 3.9), (0.9, 5.0)],
    3: [(-1.2, 3.8), (0.2, 5.2), (1.3, 3.9)],
}


@dataclass
class _Mover:
    """One mover: its parts (kind (P,), half (P, 3), texel (P,)) and their poses over time."""

    kind: list
    half: list
    texel: list
    poses: Callable[[float], np.ndarray]  # s -> (P, 4, 4)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    return rotation(rng.standard_normal(3), rng.uniform(0, 2 * math.pi))


def _cube(seed: int) -> _Mover:
    m = _motion(seed)
    return _Mover([BOX], [(_CUBE_HALF,) * 3], [_CUBE_TEXEL], lambda s: object_pose(m, s)[None])


def _sphere(rng: np.random.Generator, ax: float, az: float) -> _Mover:
    """A ball (r ~0.3 m) bouncing 1.5 times diagonally across the floor, towards the camera,
    spinning 200-320 degrees about a random axis."""
    r = 0.3 * (1 + 0.15 * rng.uniform(-1, 1))
    d = rng.choice([-1.0, 1.0])
    p0, p1 = np.array([ax - 0.7 * d, az + 0.4]), np.array([ax + 0.7 * d, az - 0.4])
    axis = rng.standard_normal(3)
    span = math.radians(rng.uniform(200, 320))
    r0 = _random_rotation(rng)
    phase = rng.uniform(0, 0.3)

    def poses(s: float) -> np.ndarray:
        x, z = p0 + s * (p1 - p0)
        y = FLOOR_Y - r - 0.35 * abs(math.sin(math.pi * (1.5 * s + phase)))
        return _pose(rotation(axis, span * s) @ r0, [x, y, z])[None]

    return _Mover([SPHERE], [(r, r, r)], [0.004], poses)


def _slider(rng: np.random.Generator, ax: float, az: float) -> _Mover:
    """A box (~0.64 x 0.4 x 0.48 m) sliding 1.3 m over the floor towards the camera and
    sideways, turning 80-120 degrees about the vertical."""
    half = np.array([0.32, 0.2, 0.24]) * (1 + 0.1 * rng.uniform(-1, 1, 3))
    d = rng.choice([-1.0, 1.0])
    p0, p1 = np.array([ax + 0.5 * d, az + 0.7]), np.array([ax - 0.5 * d, az - 0.6])
    yaw0 = rng.uniform(0, 2 * math.pi)
    span = math.radians(rng.uniform(80, 120)) * rng.choice([-1.0, 1.0])

    def poses(s: float) -> np.ndarray:
        x, z = p0 + s * (p1 - p0)
        return _pose(rotation([0, 1, 0], yaw0 + span * s), [x, FLOOR_Y - half[1], z])[None]

    return _Mover([BOX], [tuple(half)], [0.004], poses)


def _walker(rng: np.random.Generator, ax: float, az: float) -> _Mover:
    """An articulated figure ~1.65 m tall walking 1.8 m across (and slightly towards the
    camera): torso and legs, arms and a head (sphere) that each move rigidly; legs swing +-26
    degrees, arms +-21 degrees, 1.5 strides per clip, the head turns."""
    k = 1 + 0.05 * rng.uniform(-1, 1)  # body scale
    d = rng.choice([-1.0, 1.0])
    p0, p1 = np.array([ax - 0.9 * d, az + 0.3]), np.array([ax + 0.9 * d, az - 0.2])
    heading = math.atan2(*(p1 - p0))
    cycles = 1.5 * (1 + 0.1 * rng.uniform(-1, 1))
    phase = rng.uniform(0, 2 * math.pi)
    leg, arm = 0.4 * k, 0.28 * k
    # parts in the body frame (origin between the hips, z forward, y down)
    kinds = [BOX, SPHERE, BOX, BOX, BOX, BOX]
    halves = [
        (0.19 * k, 0.3 * k, 0.11 * k),  # torso
        (0.12 * k,) * 3,  # head
        (0.07 * k, leg, 0.07 * k),  # legs
        (0.07 * k, leg, 0.07 * k),
        (0.05 * k, arm, 0.05 * k),  # arms
        (0.05 * k, arm, 0.05 * k),
    ]

    def limb(pivot, angle: float, length: float) -> np.ndarray:
        rot = rotation([1, 0, 0], angle)
        return _pose(rot, np.asarray(pivot) + rot @ [0.0, length, 0.0])

    def poses(s: float) -> np.ndarray:
        step = 2 * math.pi * cycles * s + phase
        swing = 0.45 * math.sin(step)
        x, z = p0 + s * (p1 - p0)
        body = _pose(
            rotation([0, 1, 0], heading), [x, FLOOR_Y - 2 * leg - 0.02 * abs(math.cos(step)), z]
        )
        local = [
            _pose(np.eye(3), [0.0, -0.3 * k, 0.0]),
            _pose(rotation([0, 1, 0], 0.5 * math.sin(2 * math.pi * 0.7 * s)), [0, -0.74 * k, 0]),
            limb([-0.1 * k, 0.0, 0.0], swing, leg),
            limb([0.1 * k, 0.0, 0.0], -swing, leg),
            limb([-0.25 * k, -0.55 * k, 0.0], -0.8 * swing, arm),
            limb([0.25 * k, -0.55 * k, 0.0], 0.8 * swing, arm),
        ]
        return body @ np.stack(local)

    return _Mover(kinds, halves, [0.004] * 6, poses)


#: the stop ball rests for clip phases in [_STOP[0], _STOP[1]]
_STOP = (0.35, 0.65)


def _stopper(rng: np.random.Generator, ax: float, az: float) -> _Mover:
    """A ball (r ~0.28 m) rolling without slipping 1.9 m diagonally over the floor, at rest
    (pose exactly constant) for clip phases in [0.35, 0.65]."""
    r = 0.28 * (1 + 0.1 * rng.uniform(-1, 1))
    d = rng.choice([-1.0, 1.0])
    p0, p1 = np.array([ax - 0.8 * d, az + 0.5]), np.array([ax + 0.8 * d, az - 0.5])
    step = np.array([p1[0] - p0[0], 0.0, p1[1] - p0[1]])
    # rolling: the contact point (+y from the centre) is at rest, so axis = velocity x contact
    axis = np.cross(step, [0.0, 1.0, 0.0])
    dist = float(np.linalg.norm(step))
    r0 = _random_rotation(rng)
    a, b = _STOP

    def poses(s: float) -> np.ndarray:
        tau = (min(s, a) + max(s - b, 0.0)) / (1 - (b - a))  # progress, frozen in [a, b]
        x, z = p0 + tau * (p1 - p0)
        return _pose(rotation(axis, tau * dist / r) @ r0, [x, FLOOR_Y - r, z])[None]

    return _Mover([SPHERE], [(r, r, r)], [0.004], poses)


def _epipolar(rng: np.random.Generator, ax: float, az: float, direction: np.ndarray) -> _Mover:
    """A box (~0.5 m) sliding back and forth along ``direction`` (unit, the camera's
    translation), +-0.4 m about its start, without turning: on a straight camera path every
    point's motion is parallel to the baseline, so its flow lies on the epipolar lines."""
    half = np.array([0.25, 0.22, 0.25]) * (1 + 0.1 * rng.uniform(-1, 1, 3))
    rot = rotation([0, 1, 0], rng.uniform(0, 2 * math.pi))
    start = np.array([ax, FLOOR_Y - half[1], az])
    amp, phase = 0.4, rng.uniform(0, 0.5)

    def poses(s: float) -> np.ndarray:
        shift = amp * (math.sin(2 * math.pi * s + phase) - math.sin(phase))
        return _pose(rot, start + shift * direction)[None]

    return _Mover([BOX], [tuple(half)], [0.004], poses)


def _movers(cfg: SyntheticConfig, direction: np.ndarray) -> list[_Mover]:
    names = list(cfg.movers)
    if len(names) > MAX_MOVERS:
        raise ValueError(f"at most {MAX_MOVERS} synthetic movers, got {names}")
    out = []
    for i, name in enumerate(names):
        ax, az = _ANCHORS[len(names)][i]
        rng = np.random.default_rng([cfg.seed, 3, i])
        if name == "cube":
            out.append(_cube(cfg.seed))
        elif name == "sphere":
            out.append(_sphere(rng, ax, az))
        elif name == "box":
            out.append(_slider(rng, ax, az))
        elif name == "walker":
            out.append(_walker(rng, ax, az))
        elif name == "stop":
            out.append(_stopper(rng, ax, az))
        elif name == "epipolar":
            out.append(_epipolar(rng, ax, az, direction))
        else:
            raise ValueError(f"unknown synthetic mover {name!r}; movers: {MOVERS}")
    return out


def _mixed_statics(
    rng: np.random.Generator, scale: float, movers: list[_Mover]
) -> tuple[list, list, list, list, list]:
    """A room (floor, back and side walls) and ~10 objects placed at random off the movers'
    paths and not in front of them: returns kinds, halves, texels, hidden faces and poses."""
    kinds, halves, texels, hidden, poses = [], [], [], [], []

    def add(kind, half, texel, pose, hide=(), room=False):
        # the room's texels are never finer than the demo's: the styles' detail is in the objects
        texel *= max(scale, 1.0) if room else scale
        h = np.zeros((3, 2), bool)
        for axis, side in hide:
            h[axis, int(side)] = True
        kinds.append(kind), halves.append(tuple(half)), texels.append(texel)
        hidden.append(h), poses.append(pose)

    # the room; faces the cameras never see get a flat texture
    floor = _pose(np.eye(3), [0, FLOOR_Y + 0.1, 4.5])
    add(BOX, (6.0, 0.1, 6.5), 0.012, floor, [(1, 1)], room=True)
    add(BOX, (8.0, 4.5, 0.1), 0.02, _pose(np.eye(3), [0, -1.5, 10.6]), [(2, 1)], room=True)
    for sx in (-1, 1):
        wall = _pose(np.eye(3), [5.0 * sx, -1.5, 4.5])
        add(BOX, (0.1, 4.5, 6.5), 0.02, wall, [(0, sx > 0)], room=True)

    # the movers' swept positions (x, z) and bounding radii, for keeping objects clear of them
    track = []
    for m in movers:
        rad = np.linalg.norm(np.asarray(m.half), axis=1)
        for s in np.linspace(0, 1, 33):
            for p, rr in zip(m.poses(float(s)), rad, strict=True):
                track.append((p[0, 3], p[2, 3], rr))
    track = np.array(track).reshape(-1, 3)
    placed = []  # (x, z, horizontal radius)

    def free(x: float, z: float, rad: float) -> bool:
        for px, pz, pr in placed:
            if math.hypot(x - px, z - pz) < rad + pr + 0.1:
                return False
        if track.size:
            gap = np.hypot(track[:, 0] - x, track[:, 1] - z) - track[:, 2]
            if (gap < rad + 0.15).any():
                return False
            # not in front of a mover, as seen from the middle of the camera paths
            near = track[:, 1] > z + rad
            lo = np.arctan2(track[:, 0] - track[:, 2], track[:, 1])
            hi = np.arctan2(track[:, 0] + track[:, 2], track[:, 1])
            a0, a1 = math.atan2(x - rad, z), math.atan2(x + rad, z)
            if (near & (a0 < hi) & (a1 > lo)).any():
                return False
        return True

    def place(rad: float) -> tuple[float, float] | None:
        for _ in range(200):
            z = rng.uniform(2.6, 9.0)
            x = rng.uniform(-1, 1) * (0.5 * z + 0.3)
            if abs(x) + rad < 4.8 and free(x, z, rad):
                placed.append((x, z, rad))
                return x, z
        return None

    plan = ["sphere"] * 3 + ["box"] * 3 + ["slab"] * 2 + ["pillar"] * 2
    for what in rng.permutation(plan):
        if what == "sphere":
            r = rng.uniform(0.18, 0.45)
            at = place(r)
            if at is not None:
                y = FLOOR_Y - r if rng.random() < 0.6 else rng.uniform(-0.6, 0.5)
                add(
                    SPHERE,
                    (r, r, r),
                    rng.uniform(0.005, 0.01),
                    _pose(_random_rotation(rng), [at[0], y, at[1]]),
                )
        elif what == "box":
            half = rng.uniform(0.15, 0.5, 3)
            at = place(float(np.hypot(half[0], half[2])))
            if at is not None:
                rot = rotation([0, 1, 0], rng.uniform(0, math.pi))
                add(
                    BOX,
                    half,
                    rng.uniform(0.005, 0.01),
                    _pose(rot, [at[0], FLOOR_Y - half[1], at[1]]),
                    [(1, 1)],
                )
        elif what == "slab":
            half = np.array([rng.uniform(0.4, 0.8), rng.uniform(0.25, 0.5), 0.04])
            at = place(float(half[0]))
            if at is not None:
                rot = (
                    rotation([0, 1, 0], math.radians(rng.uniform(-40, 40)))
                    @ rotation([1, 0, 0], math.radians(rng.uniform(-30, 30)))
                    @ rotation([0, 0, 1], math.radians(rng.uniform(-20, 20)))
                )
                add(
                    BOX,
                    half,
                    rng.uniform(0.005, 0.01),
                    _pose(rot, [at[0], rng.uniform(-0.5, 0.4), at[1]]),
                )
        else:  # pillar, floor to 4 m up
            w = rng.uniform(0.15, 0.3)
            at = place(w * math.sqrt(2))
            if at is not None:
                rot = rotation([0, 1, 0], rng.uniform(0, math.pi))
                add(
                    BOX,
                    (w, 2.0, w),
                    rng.uniform(0.006, 0.012),
                    _pose(rot, [at[0], FLOOR_Y - 2.0, at[1]]),
                    [(1, 0), (1, 1)],  # its top is out of view, its bottom on the floor
                )
    return kinds, halves, texels, hidden, poses


def build_layout(cfg: SyntheticConfig) -> Layout:
    """Every primitive of the scene ``cfg`` describes, with its pose over time."""
    if cfg.layout not in LAYOUTS:
        raise ValueError(f"unknown synthetic layout {cfg.layout!r}; layouts: {LAYOUTS}")
    if cfg.texture not in TEXTURES:
        raise ValueError(f"unknown synthetic texture {cfg.texture!r}; textures: {TEXTURES}")
    path = camera_path(cfg.camera, cfg.seed)
    chord = path(1.0)[:3, 3] - path(0.0)[:3, 3]
    movers = _movers(cfg, chord / np.linalg.norm(chord))
    scale = _TEXEL_SCALE[cfg.texture]
    if cfg.layout == "boxes":
        kinds = [BOX] * len(_STATIC_BOXES)
        halves = [b.half for b in _STATIC_BOXES]
        texels = [b.texel * scale for b in _STATIC_BOXES]
        hidden = [np.zeros((3, 2), bool)] * len(_STATIC_BOXES)
        static = [_static_pose(b) for b in _STATIC_BOXES]
    else:
        rng = np.random.default_rng([cfg.seed, 5])
        kinds, halves, texels, hidden, static = _mixed_statics(rng, scale, movers)
    n_static = len(kinds)
    for m in movers:
        kinds += m.kind
        halves += m.half
        texels += [t * scale for t in m.texel]
        hidden += [np.zeros((3, 2), bool)] * len(m.kind)

    def mover_poses(s: float) -> np.ndarray:
        if not movers:
            return np.zeros((0, 4, 4))
        return np.concatenate([m.poses(s) for m in movers])

    kind = np.array(kinds, np.int64)
    half = np.array(halves, np.float64)
    texel = np.array(texels, np.float64)
    # a sphere's cube map is at most _SPHERE_MAP texels wide (its 3-D noise is the slow part)
    texel = np.where(kind == SPHERE, np.maximum(texel, 2 * half[:, 0] / _SPHERE_MAP), texel)
    return Layout(
        kind=kind,
        half=half,
        texel=texel,
        dynamic=np.arange(len(kinds)) >= n_static,
        hidden=np.stack(hidden),
        static_poses=np.stack(static),
        mover_poses=mover_poses,
        texture=cfg.texture,
    )


# --------------------------------------------------------------------------- textures


@dataclass(frozen=True)
class _Atlas:
    """Mip-mapped textures of all faces, flattened into one texel array.

    Face ``f = 6 * box + 2 * axis + side`` (side 0 = the face at -half along ``axis``). Its
    texture spans the face's two other local axes (u, v) from the face corner at -half; texel
    ``(i, j)`` of level ``l`` is centred at ``((i + 0.5), (j + 0.5)) * texel * 2**l`` metres.
    A sphere's faces are those of its bounding cube (a cube map).
    """

    texels: np.ndarray  # (T, 3) float32 linear RGB in [0, 1]
    offset: np.ndarray  # (F, L) int64 index of texel (0, 0) of level l of face f
    width: np.ndarray  # (F, L) int64
    height: np.ndarray  # (F, L) int64
    levels: np.ndarray  # (F,) int64 number of mip levels
    texel: np.ndarray  # (F,) float64 level-0 texel size in metres


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth random field (h, w) float32: unit-variance lattice values about ``cell`` texels
    apart, interpolated bicubically (so it is band-limited to wavelengths >= ~2 cells)."""
    import cv2

    grid = rng.standard_normal((math.ceil(h / cell) + 1, math.ceil(w / cell) + 1))
    return cv2.resize(grid.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)


def _fractal_noise(
    rng: np.random.Generator, h: int, w: int, finest: float, slope: float = 0.2
) -> np.ndarray:
    """Sum of value-noise octaves (h, w) float32 from ``finest`` texels up to the texture size,
    octave amplitudes ``cell ** slope`` (> 0: coarse scales stronger; < 0: fine scales
    stronger); roughly unit variance."""
    out = np.zeros((h, w), np.float32)
    total = 0.0
    cell = finest
    while True:
        amp = cell**slope
        out += amp * _value_noise(rng, h, w, cell)
        total += amp * amp
        if cell > max(h, w):
            break
        cell *= 2
    return out / math.sqrt(total)


def _stamp_shapes(
    rng: np.random.Generator, img: np.ndarray, count: int, size: tuple, soft: float = 1.0
) -> None:
    """Paint ``count`` anti-aliased discs and rotated rectangles of random colours into
    ``img`` (h, w, 3) in place; radii/half sizes uniform in ``size`` (texels), edges ramping
    over ``soft`` texels."""
    h, w = img.shape[:2]
    pad = int(math.ceil(soft)) + 1
    for _ in range(count):
        r = rng.uniform(*size)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        colour = rng.uniform(0.05, 0.95, 3).astype(np.float32)
        rect = rng.random() < 0.5
        aspect, angle = rng.uniform(0.3, 1.0), rng.uniform(0, math.pi)
        x0, x1 = max(int(cx - r) - pad, 0), min(int(cx + r) + pad + 1, w)
        y0, y1 = max(int(cy - r) - pad, 0), min(int(cy + r) + pad + 1, h)
        if x1 <= x0 or y1 <= y0:
            continue
        y, x = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dx, dy = x + 0.5 - cx, y + 0.5 - cy
        if rect:
            c, s = math.cos(angle), math.sin(angle)
            a, b = np.abs(c * dx + s * dy), np.abs(-s * dx + c * dy)
            inside = np.minimum(r - a, r * aspect - b)
        else:
            inside = r - np.hypot(dx, dy)
        if soft != 1.0:
            inside = inside / np.float32(soft)
        alpha = np.clip(inside + 0.5, 0, 1)[..., None]
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - alpha) + colour * alpha


@dataclass(frozen=True)
class _Style:
    """Texture statistics, sizes in texels: base colour range; luminance and chroma fractal
    noise (finest octave, octave slope, amplitude); stamped shapes (texels per shape, most per
    face, size range, edge ramp); patches (layers of hard-edged blobs where a noise of cell
    ``patch_cell`` exceeds ``patch_level`` standard deviations)."""

    base: tuple[float, float]
    lum: tuple[float, float, float]
    chroma: tuple[float, float, float]
    shape_area: float
    shape_cap: int
    shape_size: tuple[float, float]
    soft: float
    patch_layers: int
    patch_cell: float
    patch_level: float


_STYLES = {
    "smooth": _Style(
        (0.3, 0.7), (24.0, 0.2, 0.18), (48.0, 0.2, 0.08), 40000, 40, (15, 50), 10, 0, 40, 1.0
    ),
    "medium": _Style(
        (0.3, 0.7), (2.0, 0.2, 0.25), (6.0, 0.2, 0.1), 1000, 800, (2, 12), 1, 0, 8, 1.0
    ),
    "high": _Style(
        (0.25, 0.75), (1.0, -0.1, 0.3), (3.0, 0.0, 0.12), 2000, 150, (2, 8), 1, 3, 3.0, 1.0
    ),
}


def _patches(img: np.ndarray, noise: np.ndarray, colour: np.ndarray, st: _Style) -> None:
    """Blend ``colour`` (3,) into ``img`` (..., 3) in place where ``noise`` (...) (unit
    variance, cell ``st.patch_cell`` texels) exceeds ``st.patch_level``; the edge ramps over
    about ``st.soft`` texels."""
    ramp = st.soft / st.patch_cell
    alpha = np.clip((noise - st.patch_level) / ramp + 0.5, 0, 1).astype(np.float32)[..., None]
    img *= 1 - alpha
    img += colour * alpha


def _face_texture(rng: np.random.Generator, h: int, w: int, style: str = "medium") -> np.ndarray:
    """Level-0 texture (h, w, 3) float32 in [0, 1]: a base colour modulated by fractal luminance
    and chroma noise, plus discs and rectangles and patches (``medium``, the demo's: noise from
    2 texels up, shapes 4-24 texels across covering about half)."""
    st = _STYLES[style]
    base = rng.uniform(*st.base, 3).astype(np.float32)
    if style == "medium":  # the demo's exact sequence of draws
        lum = _fractal_noise(rng, h, w, 2.0)
        chroma = np.stack([_fractal_noise(rng, h, w, 6.0) for _ in range(3)], axis=-1)
        img = base + 0.25 * lum[..., None] + 0.1 * chroma
        _stamp_shapes(rng, img, int(np.clip(h * w / 1000, 2, 800)), (2.0, 12.0))
        return np.clip(img, 0.0, 1.0)
    lum = _fractal_noise(rng, h, w, st.lum[0], st.lum[1])
    chroma = np.stack([_fractal_noise(rng, h, w, *st.chroma[:2]) for _ in range(3)], axis=-1)
    img = base + np.float32(st.lum[2]) * lum[..., None] + np.float32(st.chroma[2]) * chroma
    for _ in range(st.patch_layers):
        noise = _value_noise(rng, h, w, st.patch_cell)
        _patches(img, noise / max(float(noise.std()), 1e-6), rng.uniform(0.05, 0.95, 3), st)
    count = int(np.clip(h * w / st.shape_area, 1, st.shape_cap))
    _stamp_shapes(rng, img, count, st.shape_size, st.soft)
    return np.clip(img, 0.0, 1.0)


def _face_shade(axis: int, side: int) -> float:
    """Baked Lambertian factor of a face (light fixed in the box frame, above-left-front)."""
    light = np.array([-0.3, -1.0, -0.5]) / np.linalg.norm([-0.3, -1.0, -0.5])
    normal = np.zeros(3)
    normal[axis] = 1.0 if side else -1.0
    return 0.55 + 0.45 * max(float(normal @ light), 0.0)


@functools.lru_cache(maxsize=16)
def _cube_map_normals(size: int, step: int) -> np.ndarray:
    """Unit normals (6, m, m, 3) of a sphere at the centres of ``step`` x ``step`` texel
    blocks of its six cube-map faces of ``size`` texels (m = size / step), atlas order
    (cached: read-only)."""
    m = size // step
    c = ((np.arange(m) + 0.5) * step / size) * 2 - 1  # face coordinate, [-1, 1]
    faces = []
    for axis in range(3):
        ua, va = _FACE_AXES[axis]
        for side in range(2):
            q = np.zeros((m, m, 3))
            q[..., axis] = 1.0 if side else -1.0
            q[..., ua] = c[None, :]
            q[..., va] = c[:, None]
            faces.append(q)
    q = np.stack(faces)
    out = q / np.linalg.norm(q, axis=-1, keepdims=True)
    out.flags.writeable = False
    return out


def _sphere_noise(rng: np.random.Generator, r: float, size: int, texel: float, cell: float):
    """One octave of 3-D value noise (6, size, size) float32 on a sphere's cube map: lattice
    values ``cell`` metres apart, trilinear, evaluated at the sphere points of texel blocks up to
    half a cell wide and upsampled (the cost stays near one full-resolution evaluation for a
    whole fractal sum)."""
    import cv2
    from scipy.ndimage import map_coordinates

    step = 1
    while step * 2 * texel <= cell / 2 and size % (step * 2) == 0 and size // (step * 2) >= 4:
        step *= 2
    p = _cube_map_normals(size, step) * r
    n = int(math.ceil(2 * r / cell)) + 4
    grid = rng.standard_normal((n, n, n)).astype(np.float32)
    coords = ((p.reshape(-1, 3) + r) / cell + 1.5).T.astype(np.float32)
    vals = map_coordinates(grid, coords, order=1, mode="nearest").reshape(p.shape[:3])
    if step == 1:
        return vals
    return np.stack([cv2.resize(v, (size, size), interpolation=cv2.INTER_LINEAR) for v in vals])


def _sphere_fractal(rng, r: float, size: int, texel: float, finest: float, slope: float):
    """Fractal sum (6, size, size) of :func:`_sphere_noise` octaves from ``finest`` texels up to
    the sphere's diameter, amplitudes ``(cell / finest) ** slope``, unit variance."""
    out = np.zeros((6, size, size), np.float32)
    cell = finest * texel
    while True:
        out += np.float32((cell / (finest * texel)) ** slope) * _sphere_noise(
            rng, r, size, texel, cell
        )
        if cell > 2 * r:
            break
        cell *= 2
    return out / max(float(out.std()), 1e-6)


def _sphere_textures(
    rng: np.random.Generator, r: float, texel: float, size: int, style: str
) -> list[np.ndarray]:
    """The six cube-map faces (size, size, 3) float32 of a sphere of radius ``r`` (m), in atlas
    order (axis, side): colour from 3-D noise at each texel's point on the sphere (no seams),
    luminance and chroma noise plus patches as the style's faces have, times a Lambertian shade
    of the sphere's normal (light fixed to the sphere)."""
    st = _STYLES[style]
    base = rng.uniform(*st.base, 3).astype(np.float32)
    lum = _sphere_fractal(rng, r, size, texel, *st.lum[:2])
    chroma = np.stack(
        [_sphere_fractal(rng, r, size, texel, *st.chroma[:2]) for _ in range(3)], axis=-1
    )
    img = base + np.float32(st.lum[2]) * lum[..., None] + np.float32(st.chroma[2]) * chroma
    # patches stand in for the faces' stamped shapes: blobs of about the shapes' size
    cell = st.patch_cell if st.patch_layers else float(np.mean(st.shape_size))
    pst = dataclasses.replace(st, patch_cell=cell, patch_level=1.2)
    for _ in range(max(st.patch_layers, 2)):
        noise = _sphere_noise(rng, r, size, texel, cell * texel)
        _patches(img, noise / max(float(noise.std()), 1e-6), rng.uniform(0.05, 0.95, 3), pst)
    light = np.array([-0.3, -1.0, -0.5]) / np.linalg.norm([-0.3, -1.0, -0.5])
    shade = 0.55 + 0.45 * np.maximum(_cube_map_normals(size, 1) @ light, 0.0)
    img = np.clip(img, 0.0, 1.0) * shade[..., None].astype(np.float32)
    return list(img)


def _mips(img: np.ndarray) -> list[np.ndarray]:
    """Mip pyramid of ``img`` (h, w, 3): exact 2x2 box-filtered halvings while both sides are
    even and the result keeps both sides >= 2."""
    import cv2

    out = [img]
    while min(out[-1].shape[:2]) >= 4 and not (out[-1].shape[0] % 2 or out[-1].shape[1] % 2):
        prev = out[-1]
        size = (prev.shape[1] // 2, prev.shape[0] // 2)
        out.append(cv2.resize(prev, size, interpolation=cv2.INTER_AREA))
    return out


def _atlas(layout: Layout, seed: int, eyes: np.ndarray | None = None) -> _Atlas:
    """Generate every face's texture (deterministic in ``seed``) and pack the mip levels.

    A static box's face that none of the camera centres ``eyes`` (K, 3) is in front of is never
    hit (a ray enters a box through a face that faces it): it gets a flat texture, which saves
    about half the texture work without changing any visible texel.
    """
    chunks, offsets, widths, heights, levels, texels = [], [], [], [], [], []
    pos = 0
    n_static = len(layout.static_poses)

    def seen(b: int, axis: int, side: int) -> bool:
        if eyes is None or b >= n_static:
            return True
        pose = layout.static_poses[b]
        normal = pose[:3, axis] * (1.0 if side else -1.0)
        point = pose[:3, 3] + normal * layout.half[b, axis]
        return bool(((eyes - point) @ normal > -1e-9).any())

    for b, (half, texel) in enumerate(zip(layout.half, layout.texel, strict=True)):
        if layout.kind[b] == SPHERE:
            size = 64 * math.ceil(2 * half[0] / texel / 64)
            rng = np.random.default_rng([seed, 2, b])
            images = iter(_sphere_textures(rng, half[0], texel, size, layout.texture))
        for axis in range(3):
            ua, va = _FACE_AXES[axis]
            # sizes rounded up to a multiple of 64 texels: the first 6 mip levels are exact
            w = 64 * math.ceil(2 * half[ua] / texel / 64)
            h = 64 * math.ceil(2 * half[va] / texel / 64)
            for side in range(2):
                if layout.kind[b] == SPHERE:
                    img = next(images)
                elif layout.hidden[b, axis, side] or not seen(b, axis, side):  # one flat level
                    img = np.full((2, 2, 3), 0.5, np.float32)
                else:
                    rng = np.random.default_rng([seed, 2, b, axis, side])
                    img = _face_texture(rng, h, w, layout.texture)
                    img = img * np.float32(_face_shade(axis, side))
                pyr = _mips(img)
                offsets.append([]), widths.append([]), heights.append([])
                for level in pyr:
                    offsets[-1].append(pos)
                    heights[-1].append(level.shape[0])
                    widths[-1].append(level.shape[1])
                    chunks.append(level.reshape(-1, 3))
                    pos += level.shape[0] * level.shape[1]
                levels.append(len(pyr))
                texels.append(texel)
    nl = max(levels)

    def pad(a: list) -> list:  # repeat the coarsest level up to the common level count
        return a + [a[-1]] * (nl - len(a))

    return _Atlas(
        texels=np.concatenate(chunks).astype(np.float32),
        offset=np.array([pad(o) for o in offsets], np.int64),
        width=np.array([pad(o) for o in widths], np.int64),
        height=np.array([pad(o) for o in heights], np.int64),
        levels=np.array(levels, np.int64),
        texel=np.array(texels, np.float64),
    )


def _bilinear(atlas: _Atlas, face: np.ndarray, level: np.ndarray, u: np.ndarray, v: np.ndarray):
    """Bilinear lookup (R, 3) at face coordinates ``u, v`` (R,) metres in mip ``level`` (R,)."""
    scale = 1.0 / (atlas.texel[face] * np.exp2(level))
    w, h = atlas.width[face, level], atlas.height[face, level]
    x = np.clip(u * scale - 0.5, 0, w - 1)
    y = np.clip(v * scale - 0.5, 0, h - 1)
    x0 = np.minimum(np.floor(x), w - 2).astype(np.int64)
    y0 = np.minimum(np.floor(y), h - 2).astype(np.int64)
    fx, fy = (x - x0).astype(np.float32)[:, None], (y - y0).astype(np.float32)[:, None]
    i = atlas.offset[face, level] + y0 * w + x0
    t = atlas.texels
    top = t[i] * (1 - fx) + t[i + 1] * fx
    bottom = t[i + w] * (1 - fx) + t[i + w + 1] * fx
    return top * (1 - fy) + bottom * fy


def _sample(atlas: _Atlas, face: np.ndarray, u: np.ndarray, v: np.ndarray, footprint: np.ndarray):
    """Trilinear (mip-mapped) texture colour (R, 3) float32 of samples covering ``footprint``
    (R,) metres on their face."""
    top = atlas.levels[face] - 1
    lod = np.clip(np.log2(np.maximum(footprint / atlas.texel[face], 1e-6)), 0, top)
    l0 = np.floor(lod).astype(np.int64)
    l1 = np.minimum(l0 + 1, top)
    frac = (lod - l0).astype(np.float32)[:, None]
    out = _bilinear(atlas, face, l0, u, v)
    mix = np.flatnonzero(frac[:, 0] > 0)  # magnified samples (frac 0) need one level only
    if mix.size:
        f = frac[mix]
        coarse = _bilinear(atlas, face[mix], l1[mix], u[mix], v[mix])
        out[mix] = out[mix] * (1 - f) + coarse * f
    return out


# --------------------------------------------------------------------------- ray casting


@dataclass
class _Hits:
    """First hits of R rays: ray parameter (R,) (= camera z for camera-z-normalised rays),
    primitive (R,) int (-1 = miss), entry face axis and side (R,) (a sphere's: its cube-map
    face), local hit point (R, 3), and |cos| of the angle between ray and surface normal (R,)."""

    t: np.ndarray
    box: np.ndarray
    axis: np.ndarray
    side: np.ndarray
    local: np.ndarray
    cos: np.ndarray


def _intersect(poses: np.ndarray, half: np.ndarray, origin: np.ndarray, dirs: np.ndarray):
    """Nearest ray-box intersection (slab method) of rays ``origin + t * dirs`` (dirs (R, 3),
    world) with all boxes (poses (B, 4, 4) box-to-world, half sizes (B, 3)); rays starting
    inside a box ignore it. Computes in the dtype of ``dirs``; arrays are axis-major (3, B, R)."""
    dt = dirs.dtype
    rot = poses[:, :3, :3]
    o_loc = np.einsum("bji,bj->bi", rot, origin - poses[:, :3, 3])  # (B, 3): R^T (o - t)
    rt = rot.astype(dt)[:, :, :, None]  # (B, 3, 3, 1)
    dx, dy, dz = dirs.T  # (R,) each
    d_loc = (rt[:, 0] * dx + rt[:, 1] * dy + rt[:, 2] * dz).transpose(1, 0, 2)  # (3, B, R): R^T d
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d_loc
        lo = (-half - o_loc).T.astype(dt)[:, :, None] * inv
        hi = (half - o_loc).T.astype(dt)[:, :, None] * inv
    near = np.minimum(lo, hi)
    far = np.maximum(lo, hi)
    t_near = np.maximum(np.maximum(near[0], near[1]), near[2])  # NaN (0 * inf) -> no hit
    t_far = np.minimum(np.minimum(far[0], far[1]), far[2])
    t_near = np.where((t_far >= t_near) & (t_near > 0), t_near, np.inf)
    box = np.argmin(t_near, axis=0)
    r = np.arange(dirs.shape[0])
    t = t_near[box, r]
    n0, n1, n2 = near[:, box, r]
    axis = np.where((n0 >= n1) & (n0 >= n2), 0, np.where(n1 >= n2, 1, 2))
    d = d_loc[:, box, r]  # (3, R)
    d_ax = d[axis, r]
    missed = ~np.isfinite(t)
    local = np.where(missed, 0, o_loc[box].T + t * d).T
    return _Hits(
        t=t,
        box=np.where(missed, -1, box),
        axis=axis,
        side=(d_ax < 0).astype(np.int64),  # entering against the normal's direction
        local=np.ascontiguousarray(local),
        cos=np.abs(d_ax) / np.sqrt((d * d).sum(axis=0)),
    )


def _intersect_spheres(poses: np.ndarray, radius: np.ndarray, origin: np.ndarray, dirs):
    """Nearest ray-sphere intersection of rays ``origin + t * dirs`` (dirs (R, 3), world) with
    spheres (poses (S, 4, 4) sphere-to-world, radii (S,)), in float64; a camera inside a sphere
    does not see it. The hit's axis and side are those of its cube-map face (largest local
    coordinate)."""
    d = dirs.astype(np.float64)
    oc = origin - poses[:, :3, 3]  # (S, 3)
    a = (d * d).sum(axis=1)  # (R,)
    b = d @ oc.T  # (R, S)
    c = (oc * oc).sum(axis=1) - radius**2  # (S,)
    disc = b * b - a[:, None] * c
    with np.errstate(invalid="ignore"):
        t_all = (-b - np.sqrt(disc)) / a[:, None]
    t_all = np.where((disc >= 0) & (t_all > 0), t_all, np.inf)
    k = np.argmin(t_all, axis=1)
    r = np.arange(d.shape[0])
    t = t_all[r, k]
    missed = ~np.isfinite(t)
    rel = np.where(missed[:, None], 0.0, oc[k] + t[:, None] * d)  # hit - centre, world
    local = np.einsum("rji,rj->ri", poses[k, :3, :3], rel)  # R^T (hit - centre)
    axis = np.argmax(np.abs(local), axis=1)
    cos = np.abs((d * rel).sum(axis=1)) / (np.sqrt(a) * radius[k])
    return _Hits(
        t=t,
        box=np.where(missed, -1, k),
        axis=axis,
        side=(local[r, axis] > 0).astype(np.int64),
        local=local,
        cos=cos,
    )


def _pixel_rays(K: np.ndarray, c2w: np.ndarray, pix: np.ndarray, dtype) -> np.ndarray:
    """World directions (R, 3) with camera z = 1 of the rays through pixel coordinates
    ``pix`` (R, 2) (integer = pixel centre)."""
    xy = (pix - K[:2, 2]) / np.diag(K)[:2]
    cam = np.concatenate([xy, np.ones_like(xy[:, :1])], axis=-1)
    return (cam @ c2w[:3, :3].T).astype(dtype)


def _screen_bounds(layout: Layout, poses: np.ndarray, K: np.ndarray, c2w: np.ndarray):
    """Conservative pixel bounds (B, 4) (x min, x max, y min, y max) of every primitive's
    bounding sphere in camera ``c2w``; unbounded for spheres reaching behind the camera."""
    cam = (poses[:, :3, 3] - c2w[:3, 3]) @ c2w[:3, :3]  # (B, 3) centres in the camera frame
    rad = np.where(layout.kind == SPHERE, layout.half[:, 0], np.linalg.norm(layout.half, axis=1))
    out = np.empty((len(rad), 4))
    out[:, 0::2], out[:, 1::2] = -np.inf, np.inf
    ok = cam[:, 2] - rad > 1e-3
    zs = np.stack([cam[ok, 2] - rad[ok], cam[ok, 2] + rad[ok]])  # (2, B')
    for i in range(2):  # x, then y: extremes of (c +- rad) / (z +- rad)
        ends = np.stack([cam[ok, i] - rad[ok], cam[ok, i] + rad[ok]])
        ratio = (ends[:, None] / zs[None]).reshape(4, -1)
        f, c = K[i, i], K[i, 2]
        out[ok, 2 * i] = f * ratio.min(axis=0) + c - 2.0
        out[ok, 2 * i + 1] = f * ratio.max(axis=0) + c + 2.0
    return out


def _merge(a: _Hits, b: _Hits) -> _Hits:
    """Per ray, the nearer of two hit sets."""
    pick = b.t < a.t
    names = [f.name for f in dataclasses.fields(_Hits)]
    return _Hits(
        *(
            np.where(
                pick[:, None] if getattr(a, k).ndim == 2 else pick, getattr(b, k), getattr(a, k)
            )
            for k in names
        )
    )


def _intersect_some(layout: Layout, poses, origin, dirs, which: np.ndarray) -> _Hits:
    """First hits of ``dirs`` among the primitives ``which`` (sorted indices); box = global
    primitive index."""
    boxes = which[layout.kind[which] == BOX]
    spheres = which[layout.kind[which] == SPHERE]
    n = dirs.shape[0]
    hits = None
    if boxes.size:
        hits = _intersect(poses[boxes], layout.half[boxes], origin, dirs)
        hits.box = np.where(hits.box < 0, -1, boxes[np.maximum(hits.box, 0)])
    if spheres.size:
        sh = _intersect_spheres(poses[spheres], layout.half[spheres, 0], origin, dirs)
        sh.box = np.where(sh.box < 0, -1, spheres[np.maximum(sh.box, 0)])
        hits = sh if hits is None else _merge(hits, sh)
    if hits is None:
        z = np.zeros(n, np.int64)
        hits = _Hits(np.full(n, np.inf), z - 1, z, z, np.zeros((n, 3)), np.zeros(n))
    return hits


def _trace(layout: Layout, poses, K, c2w, pix: np.ndarray, dirs: np.ndarray) -> _Hits:
    """First hits of the rays ``dirs`` (R, 3) through pixel coordinates ``pix`` (R, 2), in
    chunks of neighbouring pixels, each tested only against the primitives whose screen bounds
    it touches."""
    origin = c2w[:3, 3].copy()
    bounds = _screen_bounds(layout, poses, K, c2w)
    order = np.lexsort((pix[:, 0], pix[:, 1]))  # row-major: chunks are bands of rows
    parts = []
    for i in range(0, len(order), _CHUNK):
        idx = order[i : i + _CHUNK]
        p = pix[idx]
        lo, hi = p.min(axis=0), p.max(axis=0)
        which = np.flatnonzero(
            (bounds[:, 0] <= hi[0])
            & (bounds[:, 1] >= lo[0])
            & (bounds[:, 2] <= hi[1])
            & (bounds[:, 3] >= lo[1])
        )
        parts.append(_intersect_some(layout, poses, origin, dirs[idx], which))
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    names = [f.name for f in dataclasses.fields(_Hits)]
    if not parts:
        return _intersect_some(layout, poses, origin, dirs, np.arange(0))
    return _Hits(*(np.concatenate([getattr(p, k) for p in parts])[inverse] for k in names))


#: colour of rays that hit nothing (only possible for far-displaced novel cameras)
_BACKGROUND = np.float32(0.5)


def _shade(layout: Layout, atlas: _Atlas, hits: _Hits, fx: float, spacing: float):
    """Colour (R, 3) float32 of ray hits whose rays are ``spacing`` pixels apart: a trilinear
    texture lookup filtered to the footprint of that spacing on the surface."""
    colour = np.full((hits.t.size, 3), _BACKGROUND, np.float32)
    ok = hits.box >= 0
    box, axis, local = hits.box[ok], hits.axis[ok], hits.local[ok]
    r = np.arange(box.size)
    ua, va = _FACE_AXES[axis, 0], _FACE_AXES[axis, 1]
    footprint = hits.t[ok] * spacing / (fx * np.maximum(hits.cos[ok], 0.05))
    sph = layout.kind[box] == SPHERE
    if sph.any():  # project sphere points radially onto their bounding cube (the cube map)
        local = local.copy()
        stretch = np.abs(local[sph]).max(axis=1)
        stretch = layout.half[box[sph], 0] / np.maximum(stretch, 1e-12)
        local[sph] *= stretch[:, None]
        footprint[sph] *= stretch**1.5  # the cube face is stretched by 1 .. ~3 (tan^2)
    u = local[r, ua] + layout.half[box, ua]
    v = local[r, va] + layout.half[box, va]
    face = 6 * box + 2 * axis + hits.side[ok]
    colour[ok] = _sample(atlas, face, u, v, footprint)
    return colour


def _edges(key: np.ndarray) -> np.ndarray:
    """Pixels (H, W) bool whose 8-neighbourhood sees more than one surface id ``key`` (H, W)."""
    edge = np.zeros(key.shape, bool)
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = key[: key.shape[0] - dy, max(dx, 0) : key.shape[1] + min(dx, 0)]
        b = key[dy:, max(-dx, 0) : key.shape[1] + min(-dx, 0)]
        diff = a != b
        edge[: key.shape[0] - dy, max(dx, 0) : key.shape[1] + min(dx, 0)] |= diff
        edge[dy:, max(-dx, 0) : key.shape[1] + min(-dx, 0)] |= diff
    return edge


def _render_view(
    layout: Layout, atlas: _Atlas, poses: np.ndarray, K: np.ndarray, c2w: np.ndarray, hw: tuple
) -> tuple[np.ndarray, _Hits]:
    """Render one view of the primitives at ``poses`` (B, 4, 4) from camera ``c2w`` (4, 4).

    Returns the anti-aliased image (H, W, 3) uint8 and the float64 hits of the pixel-centre rays
    (row-major, H * W). Colour: one texture lookup filtered to the pixel footprint per pixel;
    pixels next to a silhouette or box edge are re-rendered as the mean of SUPERSAMPLE^2
    stratified rays, each filtered to its sub-pixel footprint.
    """
    h, w = hw
    fx = float(K[0, 0])
    pix = pixel_grid(h, w).reshape(-1, 2)
    hits = _trace(layout, poses, K, c2w, pix, _pixel_rays(K, c2w, pix, np.float64))
    colour = _shade(layout, atlas, hits, fx, 1.0)
    key = np.where(hits.box < 0, -1, 6 * hits.box + 2 * hits.axis + hits.side)
    if (layout.kind == SPHERE).any():  # a sphere's cube-map faces join without an edge
        key = np.where((hits.box >= 0) & (layout.kind[hits.box] == SPHERE), 6 * hits.box, key)
    edge = np.flatnonzero(_edges(key.reshape(hw)))
    if edge.size:
        offs = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 0.5
        sub = np.stack(np.meshgrid(offs, offs, indexing="xy"), axis=-1).reshape(-1, 2)
        spix = (pix[edge][None] + sub[:, None]).reshape(-1, 2)  # (S * E, 2)
        sdirs = _pixel_rays(K, c2w, spix, np.float32)
        shits = _trace(layout, poses, K, c2w, spix, sdirs)
        scol = _shade(layout, atlas, shits, fx, 1.0 / SUPERSAMPLE)
        colour[edge] = scol.reshape(sub.shape[0], edge.size, 3).mean(axis=0)
    img = np.clip(np.rint(colour.reshape(h, w, 3) * 255), 0, 255).astype(np.uint8)
    return img, hits


def _flow(local: np.ndarray, box: np.ndarray, poses_dst: np.ndarray, K, c2w_dst) -> np.ndarray:
    """Flow (H, W, 2) of points given in their primitive's frame (local (H, W, 3), box (H, W))
    to the target view: move each with its primitive to the target time (object-to-world
    ``poses_dst`` (B, 4, 4)), project with ``c2w_dst``, subtract the source pixel centre."""
    pose = poses_dst[box]
    world = np.einsum("hwij,hwj->hwi", pose[..., :3, :3], local) + pose[..., :3, 3]
    xy, _ = project(K, c2w_dst, world)
    return xy - pixel_grid(*box.shape)


# --------------------------------------------------------------------------- degradations

#: motion blur: fraction of the frame interval the shutter is open (180 degree shutter)
SHUTTER = 0.5
#: sensor noise, 8-bit units: variance = READ_NOISE**2 + SHOT_GAIN * intensity
READ_NOISE = 2.0
SHOT_GAIN = 0.08
#: JPEG quality of the jpeg70 degradation
JPEG_QUALITY = 70


def _motion_blur(images: np.ndarray, flow_fw: np.ndarray, flow_bw: np.ndarray) -> np.ndarray:
    """Frames (N, H, W, 3) float32 averaged along each pixel's own motion over the shutter
    interval: velocity (px per frame) from the true flows (mean of the forward and negated
    backward flow where both exist), samples one pixel apart or closer."""
    import cv2

    n, h, w = images.shape[:3]
    grid = pixel_grid(h, w).astype(np.float32)
    out = np.empty_like(images)
    for t in range(n):
        vel = []
        if t < n - 1:
            vel.append(flow_fw[t])
        if t > 0:
            vel.append(-flow_bw[t - 1])
        v = np.mean(vel, axis=0).astype(np.float32)
        length = SHUTTER * float(np.linalg.norm(v, axis=-1).max())
        steps = int(np.clip(math.ceil(length) + 1, 2, 64))
        acc = np.zeros((h, w, 3), np.float32)
        for u in np.linspace(-SHUTTER / 2, SHUTTER / 2, steps, dtype=np.float32):
            m = grid + u * v
            acc += cv2.remap(
                images[t], m[..., 0], m[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
            )
        out[t] = acc / steps
    return out


def source_frames(scene: SyntheticScene, cfg: SyntheticConfig) -> np.ndarray:
    """The frames (N, H, W, 3) uint8 that go into the source video: ``scene.images`` with the
    degradations of ``cfg.degrade`` in camera order (blur, noise, JPEG), each seeded by
    ``cfg.seed``; ``scene.images`` itself when there are none."""
    unknown = sorted(set(cfg.degrade) - set(DEGRADATIONS))
    if unknown:
        raise ValueError(f"unknown synthetic degradation(s) {unknown}; known: {DEGRADATIONS}")
    if not cfg.degrade:
        return scene.images
    frames = scene.images.astype(np.float32)
    if "blur" in cfg.degrade:
        frames = _motion_blur(frames, scene.flow_fw, scene.flow_bw)
    if "noise" in cfg.degrade:
        for t in range(len(frames)):
            rng = np.random.default_rng([cfg.seed, 7, t])
            sigma = np.sqrt(READ_NOISE**2 + SHOT_GAIN * np.maximum(frames[t], 0))
            frames[t] += sigma * rng.standard_normal(frames[t].shape).astype(np.float32)
    out = np.clip(np.rint(frames), 0, 255).astype(np.uint8)
    if "jpeg70" in cfg.degrade:
        import cv2

        for t in range(len(out)):
            ok, buf = cv2.imencode(
                ".jpg", out[t][..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
            )
            out[t] = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return out


# --------------------------------------------------------------------------- public API


def render_scene(cfg: SyntheticConfig, size: tuple[int, int] | None = None) -> SyntheticScene:
    """Render the clip described by ``cfg`` with all ground truth (deterministic in cfg.seed).

    Args:
        cfg: the scene (its ``width``/``height`` define the cameras' pixel grid).
        size: optional (width, height) to sample the same cameras on another pixel grid (K
            scaled with the image edges fixed, so pixel centres map as in ``cv2.resize``): the
            ground truth of the clip's frames resized to that size, e.g. a training size.
    """
    n, hw = int(cfg.num_frames), (int(cfg.height), int(cfg.width))
    if n < 2 or min(hw) < 2:
        raise ValueError(f"synthetic scene needs >= 2 frames of >= 2x2 pixels, got {n}, {hw}")
    layout = build_layout(cfg)
    K = intrinsics(hw[1], hw[0])
    if size is not None:
        K = scale_intrinsics(K, hw, (int(size[1]), int(size[0])))
        hw = (int(size[1]), int(size[0]))
    path = camera_path(cfg.camera, cfg.seed)
    phases = np.arange(n) / (n - 1)
    c2w = np.stack([path(s) for s in phases])
    poses = np.stack([layout.poses(s) for s in phases])  # (N, B, 4, 4)
    offsets = np.array(cfg.novel_offsets, np.float64).reshape(-1, 3)
    novel_c2w = np.array([[offset_pose(c, o) for o in offsets] for c in c2w]).reshape(
        n, len(offsets), 4, 4
    )
    eyes = np.concatenate([c2w[:, :3, 3], novel_c2w[..., :3, 3].reshape(-1, 3)])
    atlas = _atlas(layout, cfg.seed, eyes)

    images = np.zeros((n, *hw, 3), np.uint8)
    depth = np.zeros((n, *hw), np.float32)
    dynamic = np.zeros((n, *hw), bool)
    box, local = np.zeros((n, *hw), np.int64), np.zeros((n, *hw, 3))
    novel = np.zeros((n, len(offsets), *hw, 3), np.uint8)
    for t in range(n):
        images[t], hits = _render_view(layout, atlas, poses[t], K, c2w[t], hw)
        if (hits.box < 0).any():
            raise RuntimeError("a synthetic training camera sees past the scene geometry")
        depth[t] = hits.t.reshape(hw)
        box[t], local[t] = hits.box.reshape(hw), hits.local.reshape(*hw, 3)
        dynamic[t] = layout.dynamic[box[t]]
        for v in range(len(offsets)):
            novel[t, v] = _render_view(layout, atlas, poses[t], K, novel_c2w[t, v], hw)[0]
    flow_fw = [_flow(local[t], box[t], poses[t + 1], K, c2w[t + 1]) for t in range(n - 1)]
    flow_bw = [_flow(local[t + 1], box[t + 1], poses[t], K, c2w[t]) for t in range(n - 1)]
    return SyntheticScene(
        images=images,
        K=K,
        c2w=c2w,
        depth=depth,
        dynamic_mask=dynamic,
        flow_fw=np.stack(flow_fw).astype(np.float32),
        flow_bw=np.stack(flow_bw).astype(np.float32),
        novel_images=novel,
        novel_c2w=novel_c2w,
        novel_offsets=offsets,
        object_poses=poses[:, layout.dynamic],
        fps=float(cfg.fps),
    )


def write_scene(scene: SyntheticScene, video_path, gt_path, frames: np.ndarray | None = None):
    """Write the training frames as an mp4 at ``scene.fps`` and all ground truth (every field of
    :class:`SyntheticScene`) as one compressed ``.npz``; each file appears only when complete.
    ``frames`` (N, H, W, 3) uint8, if given, go into the video instead of ``scene.images`` (the
    degraded frames of :func:`source_frames`)."""
    arrays = {f.name: np.asarray(getattr(scene, f.name)) for f in dataclasses.fields(scene)}
    with atomic_file(video_path) as tmp_video, atomic_file(gt_path) as tmp_gt:
        write_video(tmp_video, scene.images if frames is None else frames, scene.fps)
        with open(tmp_gt, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def load_ground_truth(gt_path) -> SyntheticScene:
    """Read a ground-truth ``.npz`` written by :func:`write_scene`.

    Raises:
        CorruptFileError: the file is not a readable ``.npz`` (truncated, garbled) or lacks an
            array; the advice names the rule ``synthetic``, which writes it.
    """
    from nsff_core.errors import CorruptFileError

    from .io import read_npz

    z = read_npz(gt_path, made_by="synthetic")
    missing = [f.name for f in dataclasses.fields(SyntheticScene) if f.name not in z]
    if missing:
        raise CorruptFileError(gt_path, f"missing array(s) {', '.join(missing)}", "synthetic")
    values = {f.name: z[f.name] for f in dataclasses.fields(SyntheticScene)}
    values["fps"] = float(values["fps"])
    return SyntheticScene(**values)

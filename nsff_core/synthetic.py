"""Procedural dynamic scene with exact ground truth: the demo's source and the test fixture.

The scene is a set of textured, oriented boxes ray-cast analytically (slab method in each box's
local frame): a back wall (z ~ 9.6 m), a floor 1.2 m below the camera, five static boxes and
panels at 2.6-6.8 m, and one 0.6 m cube at ~3.3 m that moves mainly downwards (perpendicular
to the camera's mostly sideways motion, so epipolar motion masks can see it), bobs in depth and
tumbles. The camera sweeps ~1.3 m sideways with a slight forward arc and a small roll, always
looking at the scene centre.

Conventions (shared by rendering, depth, flow and the cameras):

- World and camera frames use OpenCV axes: x right, y down, z forward; units are metres.
  ``c2w`` (4, 4) maps camera to world coordinates.
- Pixel ``(x, y)`` (column, row) is the unit square centred on the continuous image coordinate
  ``(x, y)``: integer coordinates are pixel centres. The ray of pixel ``(x, y)`` is
  ``K^-1 (x, y, 1)``. ``K`` has ``fx = fy`` from a 60 degree horizontal field of view and the
  principal point at the image centre, ``((W - 1) / 2, (H - 1) / 2)`` (the same point as
  COLMAP's ``(W / 2, H / 2)``, which puts pixel centres at half-integers).
- Depth is the camera-frame z (not the ray length), in metres.
- Flow is in pixels, ``(u, v)`` along ``(x, y)``: the surface point seen at pixel ``p`` of the
  source frame is at continuous coordinate ``p + flow`` in the target frame (whether or not it is
  visible there). ``flow_fw[i]`` goes from frame ``i`` to ``i + 1``; ``flow_bw[i]`` from frame
  ``i + 1`` to ``i``.
- Time: frame ``t`` of ``N`` has clip phase ``s = t / (N - 1)`` in [0, 1]; the camera sweep and the
  object motion span the clip whatever ``N`` is, and the geometry does not depend on the image
  size (the camera is defined by its field of view).

Colour is one mip-mapped (trilinear) texture lookup per pixel, filtered to the pixel's
footprint, and 2x2 supersampling on pixels next to silhouettes and box edges, so images are
anti-aliased at any resolution; depth, mask and flow come from the single ray through each pixel
centre. Shading is baked into the textures (Lambertian, light fixed to each box), so a surface
point keeps its colour as it moves: brightness constancy holds up to texture filtering.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .cameras import project
from .config import SyntheticConfig
from .io import atomic_file, write_video

#: horizontal field of view of the camera, degrees
HFOV_DEG = 60.0
#: colour samples per pixel along each image axis
SUPERSAMPLE = 2
#: other two local axes of a face, by the face's normal axis: (u axis, v axis)
_FACE_AXES = np.array([[1, 2], [0, 2], [0, 1]])
#: rays per intersection chunk (bounds memory: a few (boxes, chunk, 3) float arrays)
_CHUNK = 1 << 15


# --------------------------------------------------------------------------- result container


@dataclass
class SyntheticScene:
    """A rendered synthetic clip and its ground truth (N frames, V novel views per frame).

    Attributes:
        images: (N, H, W, 3) uint8 RGB training frames.
        K: (3, 3) float64 pinhole intrinsics in pixels (shared by all cameras).
        c2w: (N, 4, 4) float64 camera-to-world poses, OpenCV axes, metres.
        depth: (N, H, W) float32 camera-frame z of the surface at each pixel centre, metres.
        dynamic_mask: (N, H, W) bool, True where the pixel centre's first hit moves.
        flow_fw: (N-1, H, W, 2) float32 flow from frame i to i+1, pixels.
        flow_bw: (N-1, H, W, 2) float32 flow from frame i+1 to i, pixels.
        novel_images: (N, V, H, W, 3) uint8 held-out views at the training times.
        novel_c2w: (N, V, 4, 4) float64 poses of the held-out views.
        novel_offsets: (V, 3) float64 offsets of the held-out views in the training camera frame.
        object_poses: (N, M, 4, 4) float64 object-to-world poses of the M moving objects.
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
    """Training camera c2w (4, 4) at clip phase ``s`` in [0, 1]: a 1.3 m sideways sweep (left to
    right) with a 0.3 m forward drift plus a 0.1 m forward arc, +-1.5 degree roll, looking at
    the scene centre (0.1, 0.2, 5.0)."""
    eye = np.array([0.65 * (2 * s - 1), 0.0, 0.3 * s + 0.1 * math.sin(math.pi * s)])
    roll = math.radians(1.5) * math.sin(2 * math.pi * s)
    return look_at(eye, [0.1, 0.2, 5.0], roll)


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


def static_flow(depth: np.ndarray, K: np.ndarray, c2w_src: np.ndarray, c2w_dst: np.ndarray):
    """Flow (H, W, 2) float64 in pixels that a static scene with z-depth ``depth`` (H, W) of the
    source camera would have from camera ``c2w_src`` to ``c2w_dst`` (both (4, 4))."""
    xy, _ = project(K, c2w_dst, backproject(depth, K, c2w_src))
    return xy - pixel_grid(*depth.shape)


# --------------------------------------------------------------------------- scene layout


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


@dataclass(frozen=True)
class _Layout:
    """All boxes (static first, then moving): half sizes (B, 3), texels (B,), flags (B,)."""

    half: np.ndarray
    texel: np.ndarray
    dynamic: np.ndarray
    static_poses: np.ndarray  # (S, 4, 4)
    motion: _Motion

    def poses(self, s: float) -> np.ndarray:
        """Box-to-world poses (B, 4, 4) at clip phase ``s``."""
        return np.concatenate([self.static_poses, object_pose(self.motion, s)[None]])


def _layout(seed: int) -> _Layout:
    half = [b.half for b in _STATIC_BOXES] + [(_CUBE_HALF,) * 3]
    texel = [b.texel for b in _STATIC_BOXES] + [_CUBE_TEXEL]
    return _Layout(
        half=np.array(half, np.float64),
        texel=np.array(texel, np.float64),
        dynamic=np.array([False] * len(_STATIC_BOXES) + [True]),
        static_poses=np.stack([_static_pose(b) for b in _STATIC_BOXES]),
        motion=_motion(seed),
    )


# --------------------------------------------------------------------------- textures


@dataclass(frozen=True)
class _Atlas:
    """Mip-mapped textures of all faces, flattened into one texel array.

    Face ``f = 6 * box + 2 * axis + side`` (side 0 = the face at -half along ``axis``). Its
    texture spans the face's two other local axes (u, v) from the face corner at -half; texel
    ``(i, j)`` of level ``l`` is centred at ``((i + 0.5), (j + 0.5)) * texel * 2**l`` metres.
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


def _fractal_noise(rng: np.random.Generator, h: int, w: int, finest: float) -> np.ndarray:
    """Sum of value-noise octaves (h, w) float32 from ``finest`` texels up to the texture size,
    amplitudes growing slowly with scale (detail at every scale); roughly unit variance."""
    out = np.zeros((h, w), np.float32)
    total = 0.0
    cell = finest
    while True:
        amp = cell**0.2
        out += amp * _value_noise(rng, h, w, cell)
        total += amp * amp
        if cell > max(h, w):
            break
        cell *= 2
    return out / math.sqrt(total)


def _stamp_shapes(rng: np.random.Generator, img: np.ndarray, count: int, size: tuple) -> None:
    """Paint ``count`` anti-aliased discs and rotated rectangles of random colours into
    ``img`` (h, w, 3) in place; radii/half sizes uniform in ``size`` (texels)."""
    h, w = img.shape[:2]
    for _ in range(count):
        r = rng.uniform(*size)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        colour = rng.uniform(0.05, 0.95, 3).astype(np.float32)
        rect = rng.random() < 0.5
        aspect, angle = rng.uniform(0.3, 1.0), rng.uniform(0, math.pi)
        x0, x1 = max(int(cx - r) - 2, 0), min(int(cx + r) + 3, w)
        y0, y1 = max(int(cy - r) - 2, 0), min(int(cy + r) + 3, h)
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
        alpha = np.clip(inside + 0.5, 0, 1)[..., None]
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - alpha) + colour * alpha


def _face_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Level-0 texture (h, w, 3) float32 in [0, 1]: a base colour modulated by fractal luminance
    and chroma noise, plus soft discs and rectangles 4-24 texels across (about half covered)."""
    base = rng.uniform(0.3, 0.7, 3).astype(np.float32)
    lum = _fractal_noise(rng, h, w, 2.0)
    chroma = np.stack([_fractal_noise(rng, h, w, 6.0) for _ in range(3)], axis=-1)
    img = base + 0.25 * lum[..., None] + 0.1 * chroma
    _stamp_shapes(rng, img, int(np.clip(h * w / 1000, 2, 800)), (2.0, 12.0))
    return np.clip(img, 0.0, 1.0)


def _face_shade(axis: int, side: int) -> float:
    """Baked Lambertian factor of a face (light fixed in the box frame, above-left-front)."""
    light = np.array([-0.3, -1.0, -0.5]) / np.linalg.norm([-0.3, -1.0, -0.5])
    normal = np.zeros(3)
    normal[axis] = 1.0 if side else -1.0
    return 0.55 + 0.45 * max(float(normal @ light), 0.0)


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


def _atlas(layout: _Layout, seed: int) -> _Atlas:
    """Generate every face's texture (deterministic in ``seed``) and pack the mip levels."""
    chunks, offsets, widths, heights, levels, texels = [], [], [], [], [], []
    pos = 0
    for b, (half, texel) in enumerate(zip(layout.half, layout.texel, strict=True)):
        for axis in range(3):
            ua, va = _FACE_AXES[axis]
            # sizes rounded up to a multiple of 64 texels: the first 6 mip levels are exact
            w = 64 * math.ceil(2 * half[ua] / texel / 64)
            h = 64 * math.ceil(2 * half[va] / texel / 64)
            for side in range(2):
                rng = np.random.default_rng([seed, 2, b, axis, side])
                img = _face_texture(rng, h, w) * np.float32(_face_shade(axis, side))
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
    return _bilinear(atlas, face, l0, u, v) * (1 - frac) + _bilinear(atlas, face, l1, u, v) * frac


# --------------------------------------------------------------------------- ray casting


@dataclass
class _Hits:
    """First hits of R rays: ray parameter (R,) (= camera z for camera-z-normalised rays), box
    (R,) int (-1 = miss), entry face axis and side (R,), local hit point (R, 3), and |cos| of the
    angle between ray and face normal (R,)."""

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


def _pixel_rays(K: np.ndarray, c2w: np.ndarray, pix: np.ndarray, dtype) -> np.ndarray:
    """World directions (R, 3) with camera z = 1 of the rays through pixel coordinates
    ``pix`` (R, 2) (integer = pixel centre)."""
    xy = (pix - K[:2, 2]) / np.diag(K)[:2]
    cam = np.concatenate([xy, np.ones_like(xy[:, :1])], axis=-1)
    return (cam @ c2w[:3, :3].T).astype(dtype)


def _trace(poses, half, origin, dirs) -> _Hits:
    """:func:`_intersect` over ray chunks (keeps temporaries small)."""
    parts = [
        _intersect(poses, half, origin, dirs[i : i + _CHUNK])
        for i in range(0, dirs.shape[0], _CHUNK)
    ]
    names = [f.name for f in dataclasses.fields(_Hits)]
    return _Hits(*(np.concatenate([getattr(p, k) for p in parts]) for k in names))


#: colour of rays that hit nothing (only possible for far-displaced novel cameras)
_BACKGROUND = np.float32(0.5)


def _shade(layout: _Layout, atlas: _Atlas, hits: _Hits, fx: float, spacing: float):
    """Colour (R, 3) float32 of ray hits whose rays are ``spacing`` pixels apart: a trilinear
    texture lookup filtered to the footprint of that spacing on the surface."""
    colour = np.full((hits.t.size, 3), _BACKGROUND, np.float32)
    ok = hits.box >= 0
    box, axis, local = hits.box[ok], hits.axis[ok], hits.local[ok]
    r = np.arange(box.size)
    ua, va = _FACE_AXES[axis, 0], _FACE_AXES[axis, 1]
    u = local[r, ua] + layout.half[box, ua]
    v = local[r, va] + layout.half[box, va]
    face = 6 * box + 2 * axis + hits.side[ok]
    footprint = hits.t[ok] * spacing / (fx * np.maximum(hits.cos[ok], 0.05))
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
    layout: _Layout, atlas: _Atlas, poses: np.ndarray, K: np.ndarray, c2w: np.ndarray, hw: tuple
) -> tuple[np.ndarray, _Hits]:
    """Render one view of the boxes at ``poses`` (B, 4, 4) from camera ``c2w`` (4, 4).

    Returns the anti-aliased image (H, W, 3) uint8 and the float64 hits of the pixel-centre rays
    (row-major, H * W). Colour: one texture lookup filtered to the pixel footprint per pixel;
    pixels next to a silhouette or face edge are re-rendered as the mean of SUPERSAMPLE^2
    stratified rays, each filtered to its sub-pixel footprint.
    """
    h, w = hw
    fx = float(K[0, 0])
    pix = pixel_grid(h, w).reshape(-1, 2)
    origin = c2w[:3, 3].copy()
    hits = _trace(poses, layout.half, origin, _pixel_rays(K, c2w, pix, np.float64))
    colour = _shade(layout, atlas, hits, fx, 1.0)
    key = np.where(hits.box < 0, -1, 6 * hits.box + 2 * hits.axis + hits.side)
    edge = np.flatnonzero(_edges(key.reshape(hw)))
    if edge.size:
        offs = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 0.5
        sub = np.stack(np.meshgrid(offs, offs, indexing="xy"), axis=-1).reshape(-1, 2)
        spix = (pix[edge][None] + sub[:, None]).reshape(-1, 2)  # (S * E, 2)
        shits = _trace(poses, layout.half, origin, _pixel_rays(K, c2w, spix, np.float32))
        scol = _shade(layout, atlas, shits, fx, 1.0 / SUPERSAMPLE)
        colour[edge] = scol.reshape(sub.shape[0], edge.size, 3).mean(axis=0)
    img = np.clip(np.rint(colour.reshape(h, w, 3) * 255), 0, 255).astype(np.uint8)
    return img, hits


def _flow(local: np.ndarray, box: np.ndarray, poses_dst: np.ndarray, K, c2w_dst) -> np.ndarray:
    """Flow (H, W, 2) of points given in their box's frame (local (H, W, 3), box (H, W)) to the
    target view: move each with its box to the target time (box-to-world ``poses_dst``
    (B, 4, 4)), project with ``c2w_dst``, subtract the source pixel centre."""
    pose = poses_dst[box]
    world = np.einsum("hwij,hwj->hwi", pose[..., :3, :3], local) + pose[..., :3, 3]
    xy, _ = project(K, c2w_dst, world)
    return xy - pixel_grid(*box.shape)


# --------------------------------------------------------------------------- public API


def render_scene(cfg: SyntheticConfig) -> SyntheticScene:
    """Render the clip described by ``cfg`` with all ground truth (deterministic in cfg.seed)."""
    n, hw = int(cfg.num_frames), (int(cfg.height), int(cfg.width))
    if n < 2 or min(hw) < 2:
        raise ValueError(f"synthetic scene needs >= 2 frames of >= 2x2 pixels, got {n}, {hw}")
    layout = _layout(cfg.seed)
    atlas = _atlas(layout, cfg.seed)
    K = intrinsics(hw[1], hw[0])
    phases = np.arange(n) / (n - 1)
    c2w = np.stack([camera_pose(s) for s in phases])
    poses = np.stack([layout.poses(s) for s in phases])  # (N, B, 4, 4)
    offsets = np.array(cfg.novel_offsets, np.float64).reshape(-1, 3)
    novel_c2w = np.array([[offset_pose(c, o) for o in offsets] for c in c2w]).reshape(
        n, len(offsets), 4, 4
    )

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


def write_scene(scene: SyntheticScene, video_path, gt_path) -> None:
    """Write the training frames as an mp4 at ``scene.fps`` and all ground truth (every field of
    :class:`SyntheticScene`) as one compressed ``.npz``; each file appears only when complete."""
    arrays = {f.name: np.asarray(getattr(scene, f.name)) for f in dataclasses.fields(scene)}
    with atomic_file(video_path) as tmp_video, atomic_file(gt_path) as tmp_gt:
        write_video(tmp_video, scene.images, scene.fps)
        with open(tmp_gt, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def load_ground_truth(gt_path) -> SyntheticScene:
    """Read a ground-truth ``.npz`` written by :func:`write_scene`.

    Raises:
        CorruptFileError: the file is not a readable ``.npz`` (truncated, garbled) or lacks an
            array; the advice names the rule ``synthetic``, which writes it.
    """
    from .errors import CorruptFileError
    from .io import read_npz

    z = read_npz(gt_path, made_by="synthetic")
    missing = [f.name for f in dataclasses.fields(SyntheticScene) if f.name not in z]
    if missing:
        raise CorruptFileError(gt_path, f"missing array(s) {', '.join(missing)}", "synthetic")
    values = {f.name: z[f.name] for f in dataclasses.fields(SyntheticScene)}
    values["fps"] = float(values["fps"])
    return SyntheticScene(**values)

"""NSFF's camera conventions in one place: pose normalisation, pixel rays, NDC, projection.

Frames and axes
---------------
- **SfM world**: the frame of ``cameras.npz`` and of camera-path files. ``c2w`` (4, 4) there uses
  **OpenCV camera axes** (x right, y down, z forward), arbitrary SfM units.
- **NSFF world** (the "normalised" frame): what training, rendering and the fields see. It is
  obtained from the SfM world by :class:`SceneNormalization`, a similarity
  ``X_nsff = s * R_avg^T (X_sfm - c_avg)``: the average camera sits at the origin
  looking along -z, and ``s = 1 / near_depth``. Camera poses here use **NSFF camera axes** =
  OpenGL (x right, y up, z back; the camera looks along -z), as nsff_pl. Converting a pose's
  axes is an involution: negate the y and z columns of its rotation (:func:`flip_yz_axes`).
- **NDC**: a global warp of the NSFF world (:func:`world_to_ndc`), built from the
  **reference (training) intrinsics** whatever camera renders a ray.

Scale: ``near_depth`` = 0.75 x the nearest scene-content depth (SfM units; the
caller computes it). Dividing by it puts depth ``near_depth`` at 1 normalised unit, which is the
NDC near plane (z = -1, NDC z = -1) for the average camera, and the nearest content at
1 / 0.75 = 1.33 units. Camera-z depths scale by ``s``; rotations are unchanged by the scale.

Pixels
------
``K`` (3, 3) is in OpenCV's pixel convention at the resolution of the image: pixel (column x,
row y) has its **centre at the integer coordinate (x, y)**, so the image spans
[-0.5, W - 0.5] x [-0.5, H - 0.5] and a centred principal point is ((W - 1) / 2, (H - 1) / 2).
Ray and projection functions use exactly this K (no +0.5 anywhere), so a ray cast through pixel
coordinate (x, y) and a projection landing at (x, y) agree, and flow targets ``p + flow(p)``
(.flo files, in pixels, p integer) compare directly with projected coordinates.

NDC scale factors
-----------------
The original uses ``fx / cx`` with cx = W/2 (it forces the principal point to the image centre),
so NDC x, y in [-1, 1] covers the image of the reference camera. Here the half-extents are
taken from K as ``(cx + 0.5, cy + 0.5)`` (:func:`ndc_factors`): for a centred principal point
(our SfM keeps COLMAP's centred principal point, the synthetic scene is centred) this is exactly
(W/2, H/2), and the image edges x = -0.5 and x = W - 0.5 map to NDC x = -1 and 1. The ratio is
unchanged by :func:`nsff_core.model.cameras.scale_intrinsics`, so any resolution of the training K
defines the same warp. Always pass the **training K** to the NDC functions, also when rendering
a camera path with other intrinsics (those go to :func:`get_rays` only).

Torch functions work on CPU and CUDA in any float dtype: numpy inputs (K from cameras.npz) are
converted to the dtype and device of the tensor arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

Tensor = torch.Tensor

# --------------------------------------------------------------------------- axes, normalisation


def flip_yz_axes(c2w: np.ndarray) -> np.ndarray:
    """Convert camera poses between OpenCV and NSFF/OpenGL camera axes (an involution).

    Args:
        c2w: (..., 3, 4) or (..., 4, 4) camera-to-world matrices; the world frame is unchanged.

    Returns:
        float64 copy with the camera y and z axes (rotation columns 1 and 2) negated.
    """
    out = np.array(c2w, dtype=np.float64)
    out[..., :3, 1:3] *= -1.0
    return out


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def average_pose(c2w: np.ndarray) -> np.ndarray:
    """Average camera pose (LLFF ``poses_avg``), axes as given.

    Centre = mean camera position; z = normalised mean z axis; x = normalise(mean y x z);
    y = z x x.

    Args:
        c2w: (N, 3|4, 4) camera-to-world matrices (NSFF axes in the pipeline).

    Returns:
        (4, 4) float64 camera-to-world matrix of the average camera.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    z = _normalize(c2w[:, :3, 2].sum(0))
    x = _normalize(np.cross(c2w[:, :3, 1].sum(0), z))
    y = np.cross(z, x)
    out = np.eye(4)
    out[:3, :3] = np.stack([x, y, z], axis=1)
    out[:3, 3] = c2w[:, :3, 3].mean(0)
    return out


@dataclass(frozen=True)
class SceneNormalization:
    """World similarity SfM world -> NSFF world, ``X_nsff = matrix @ [X_sfm, 1]``.

    Attributes:
        matrix: (4, 4) float64 ``[s R | t]`` with R a rotation; maps SfM-world points
            (SfM units) to NSFF-world points (normalised units).
        scale: s, normalised units per SfM unit (= 1 / near_depth). Depths and distances
            scale by it.

    Stored in checkpoints through :meth:`to_dict` / :meth:`from_dict` (plain floats, JSON-safe).
    """

    matrix: np.ndarray
    scale: float

    def __post_init__(self) -> None:
        m = np.array(self.matrix, dtype=np.float64)
        if m.shape != (4, 4) or not np.allclose(m[3], [0, 0, 0, 1]):
            raise ValueError(f"matrix must be a (4, 4) affine transform, got {m}")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be positive and finite, got {self.scale}")
        r = m[:3, :3] / self.scale
        if not np.allclose(r.T @ r, np.eye(3), atol=1e-6) or np.linalg.det(r) < 0:
            raise ValueError("matrix[:3, :3] / scale is not a rotation")
        object.__setattr__(self, "matrix", m)
        object.__setattr__(self, "scale", float(self.scale))

    @property
    def rotation(self) -> np.ndarray:
        """(3, 3) rotation part (SfM world axes -> NSFF world axes)."""
        return self.matrix[:3, :3] / self.scale

    def apply_points(self, points: np.ndarray) -> np.ndarray:
        """SfM-world points (..., 3) -> NSFF-world points (..., 3), float64."""
        p = np.asarray(points, dtype=np.float64)
        return p @ self.matrix[:3, :3].T + self.matrix[:3, 3]

    def unapply_points(self, points: np.ndarray) -> np.ndarray:
        """NSFF-world points (..., 3) -> SfM-world points (..., 3) (inverse of apply_points)."""
        p = np.asarray(points, dtype=np.float64) - self.matrix[:3, 3]
        return p @ self.matrix[:3, :3] / self.scale**2

    def apply_c2w(self, c2w_opencv: np.ndarray) -> np.ndarray:
        """Poses in the SfM world with OpenCV axes (e.g. a camera-path file) -> NSFF poses.

        Args:
            c2w_opencv: (..., 3|4, 4) SfM world, OpenCV camera axes.

        Returns:
            (..., 4, 4) float64 c2w in the NSFF world with NSFF (OpenGL) camera axes; its
            rotation stays orthonormal (only the centre is scaled).
        """
        c2w = flip_yz_axes(c2w_opencv)
        out = np.zeros(c2w.shape[:-2] + (4, 4))
        out[..., :3, :3] = self.rotation @ c2w[..., :3, :3]
        out[..., :3, 3] = self.apply_points(c2w[..., :3, 3])
        out[..., 3, 3] = 1.0
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict: ``{"matrix": 4x4 nested list, "scale": float}``."""
        return {"matrix": self.matrix.tolist(), "scale": self.scale}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SceneNormalization:
        """Inverse of :meth:`to_dict` (also accepts arrays or tensors as values)."""
        m = d["matrix"]
        m = m.detach().cpu().numpy() if isinstance(m, Tensor) else m
        return cls(matrix=np.asarray(m, dtype=np.float64), scale=float(d["scale"]))


def normalize_poses(
    c2w_opencv: np.ndarray, near_depth: float
) -> tuple[np.ndarray, SceneNormalization]:
    """Training poses -> NSFF world and axes, and the similarity used (see the module docstring).

    Steps: flip to NSFF (OpenGL) camera axes; left-multiply by the inverse average pose
    (:func:`average_pose` of the flipped poses); divide translations by ``near_depth``.

    Args:
        c2w_opencv: (N, 3|4, 4) camera-to-world, SfM world, OpenCV axes (``cameras.npz``).
        near_depth: SfM units; 0.75 x the nearest content depth (computed by the caller).
            A point at camera depth ``near_depth`` ends at depth 1 (the NDC near plane).

    Returns:
        c2w_nsff: (N, 4, 4) float64, NSFF world, NSFF camera axes.
        normalization: the :class:`SceneNormalization`; ``normalization.apply_c2w(c2w_opencv)``
            equals ``c2w_nsff``.
    """
    near_depth = float(near_depth)
    if not (np.isfinite(near_depth) and near_depth > 0):
        raise ValueError(f"near_depth must be positive and finite, got {near_depth}")
    c2w_opencv = np.asarray(c2w_opencv, dtype=np.float64)
    if c2w_opencv.ndim != 3 or c2w_opencv.shape[1:] not in ((3, 4), (4, 4)):
        raise ValueError(f"c2w must be (N, 3|4, 4), got {c2w_opencv.shape}")
    avg = average_pose(flip_yz_axes(c2w_opencv))
    s = 1.0 / near_depth
    r_inv = avg[:3, :3].T
    matrix = np.eye(4)
    matrix[:3, :3] = s * r_inv
    matrix[:3, 3] = -s * r_inv @ avg[:3, 3]
    norm = SceneNormalization(matrix=matrix, scale=s)
    return norm.apply_c2w(c2w_opencv), norm


# --------------------------------------------------------------------------- pixel rays (torch)


def _float_tensor(x: Any, like: Tensor | None = None) -> Tensor:
    """``x`` as a floating tensor with the dtype/device of ``like`` (default dtype otherwise)."""
    if like is not None:
        return torch.as_tensor(x, dtype=like.dtype, device=like.device)
    t = torch.as_tensor(x)
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


def pixel_grid(
    hw: tuple[int, int], dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> Tensor:
    """Integer pixel-centre coordinates of an image, row-major.

    Returns:
        (H*W, 2) tensor of (x, y) = (column, row); index ``y * W + x``.
    """
    h, w = int(hw[0]), int(hw[1])
    dtype = dtype or torch.get_default_dtype()
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=dtype, device=device),
        torch.arange(w, dtype=dtype, device=device),
        indexing="ij",
    )
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)


def camera_directions(K: Any, xy: Tensor) -> Tensor:
    """Camera-frame ray directions of pixel coordinates, NSFF (OpenGL) camera axes.

    ``((x - cx) / fx, -(y - cy) / fy, -1)`` with K in the integer-pixel-centre convention.

    Args:
        K: (3, 3) intrinsics (pixels) of the camera that sees ``xy``.
        xy: (..., 2) float pixel coordinates (x = column, y = row).

    Returns:
        (..., 3) un-normalised directions (camera z component -1).
    """
    K = _float_tensor(K, xy)
    x = (xy[..., 0] - K[0, 2]) / K[0, 0]
    y = -(xy[..., 1] - K[1, 2]) / K[1, 1]
    return torch.stack([x, y, -torch.ones_like(x)], dim=-1)


def get_rays_at(K: Any, c2w: Tensor, xy: Tensor, normalize: bool = True) -> tuple[Tensor, Tensor]:
    """World rays through given pixel coordinates.

    Args:
        K: (3, 3) intrinsics of the rendering camera (pixels, integer pixel centres).
        c2w: (3|4, 4) or (..., 3|4, 4) (broadcast against ``xy``'s batch shape) NSFF world,
            NSFF camera axes.
        xy: (..., 2) float pixel coordinates (x = column, y = row).
        normalize: return unit directions (as nsff_pl; NDC does not depend on the length).

    Returns:
        origins (..., 3) camera centres and dirs (..., 3), NSFF world; a point on the ray is
        ``origins + s * dirs`` with s >= 0 (s in world units when ``normalize``).
    """
    c2w = _float_tensor(c2w, xy)
    d_cam = camera_directions(K, xy)
    dirs = (c2w[..., :3, :3] @ d_cam.unsqueeze(-1)).squeeze(-1)
    if normalize:
        dirs = dirs / torch.linalg.vector_norm(dirs, dim=-1, keepdim=True)
    origins = c2w[..., :3, 3].expand_as(dirs)
    return origins, dirs


def get_rays(
    K: Any, c2w: Tensor, hw: tuple[int, int], normalize: bool = True
) -> tuple[Tensor, Tensor]:
    """World rays of every pixel centre of an (H, W) image, row-major (index ``y * W + x``).

    Args:
        K: (3, 3) intrinsics at resolution ``hw`` (pixels, integer pixel centres).
        c2w: (3|4, 4) tensor, NSFF world, NSFF camera axes; sets dtype and device.
        hw: (H, W).
        normalize: unit directions.

    Returns:
        origins (H*W, 3) and dirs (H*W, 3), NSFF world.
    """
    c2w = _float_tensor(c2w)
    xy = pixel_grid(hw, dtype=c2w.dtype, device=c2w.device)
    return get_rays_at(K, c2w, xy, normalize=normalize)


# --------------------------------------------------------------------------- NDC (torch)


def ndc_factors(K: Any, like: Tensor | None = None) -> Tensor:
    """NDC scale factors ``(fx / (cx + 0.5), fy / (cy + 0.5))`` of the reference intrinsics.

    ``cx + 0.5`` is the distance (pixels) from the image's left edge to the principal point,
    = W/2 for a centred principal point (see the module docstring).

    Returns:
        (2,) tensor (dtype/device of ``like`` when given).
    """
    K = _float_tensor(K, like)
    return torch.stack([K[0, 0] / (K[0, 2] + 0.5), K[1, 1] / (K[1, 2] + 0.5)])


def world_to_ndc(points: Tensor, K: Any, near: float = 1.0) -> Tensor:
    """Global NDC warp of NSFF-world points.

    ``(-ax X / Z, -ay Y / Z, 1 + 2 near / Z)`` with ``(ax, ay) = ndc_factors(K)``. Defined for
    Z < 0 (in front of the average camera); Z = -near maps to NDC z = -1, Z -> -inf to 1.

    Args:
        points: (..., 3) NSFF world.
        K: (3, 3) **training** intrinsics.
        near: the world depth of the NDC near plane (1 in NSFF).

    Returns:
        (..., 3) NDC points.
    """
    a = ndc_factors(K, points)
    z = points[..., 2]
    xy = -a * points[..., :2] / z.unsqueeze(-1)
    return torch.cat([xy, (1.0 + 2.0 * near / z).unsqueeze(-1)], dim=-1)


def ndc_to_world(points_ndc: Tensor, K: Any, near: float = 1.0, eps: float = 1e-6) -> Tensor:
    """Inverse of :func:`world_to_ndc`: ``Z = 2 near / (z - 1 - eps)``, ``X = -Z x / ax``,
    ``Y = -Z y / ay``. ``eps`` keeps NDC z = 1 (infinity) finite (Z = -2 near / eps).

    Args:
        points_ndc: (..., 3) NDC points (z < 1).
        K: (3, 3) training intrinsics (same as the forward warp).

    Returns:
        (..., 3) NSFF-world points.
    """
    a = ndc_factors(K, points_ndc)
    z = 2.0 * near / (points_ndc[..., 2] - 1.0 - eps)
    xy = -z.unsqueeze(-1) * points_ndc[..., :2] / a
    return torch.cat([xy, z.unsqueeze(-1)], dim=-1)


def rays_to_ndc(origins: Tensor, dirs: Tensor, K: Any, near: float = 1.0) -> tuple[Tensor, Tensor]:
    """World rays -> NDC rays (nsff_pl's shifted-origin rule).

    Each origin first moves along its ray onto the plane ``Z = -max(near, -o_z)``: ordinary
    cameras (o_z > -near) land on the near plane Z = -near, a camera already past it (a
    forward-moving novel view) keeps its position. Then ``o' = world_to_ndc(o)`` and
    ``d' = (-ax (d_x/d_z - o_x/o_z), -ay (d_y/d_z - o_y/o_z), -2 near / o_z)``, so that
    ``world_to_ndc(o + s d) = o' + t d'`` with ``t = 1 - o_z / (o_z + s d_z)`` in [0, 1)
    (t = 1 at infinity). Rays must point into the scene (d_z < 0).

    Args:
        origins, dirs: (..., 3) NSFF world (dirs of any length).
        K: (3, 3) **training** intrinsics.
        near: NDC near plane depth (1 in NSFF).

    Returns:
        origins_ndc (..., 3) and dirs_ndc (..., 3); d' is not normalised (its length matters:
        samples are ``o' + t d'`` with t in [0, 1]).
    """
    oz, dz = origins[..., 2], dirs[..., 2]
    shift = torch.clamp(-oz, min=near)
    tau = -(shift + oz) / dz
    o = origins + tau.unsqueeze(-1) * dirs
    o_ndc = world_to_ndc(o, K, near=near)
    a = ndc_factors(K, origins)
    oz = o[..., 2].unsqueeze(-1)
    dxy = -a * (dirs[..., :2] / dz.unsqueeze(-1) - o[..., :2] / oz)
    d_ndc = torch.cat([dxy, -2.0 * near / oz], dim=-1)
    return o_ndc, d_ndc


def ndc_extent(K: Any, c2w_nsff: Any, hw: tuple[int, int]) -> tuple[float, float]:
    """Largest |x| and |y| (NDC) that a sample of a training ray reaches.

    NDC is the frustum of one average camera; a camera turned or moved away from it sees
    beyond x, y in [-1, 1]. Samples are ``o' + t d'`` with t in [0, 1] (:func:`rays_to_ndc`),
    linear in t, so the extremes over a ray are at its two ends, and over an image on its
    border pixels (x_ndc is monotonic along the image rows and columns for points at one
    depth). Returns at least 1 on each axis.

    Args:
        K: (3, 3) training intrinsics; c2w_nsff: (N, 4, 4) training poses (NSFF world, axes).
        hw: (H, W) of the training frames.
    """
    c2w = torch.as_tensor(np.asarray(c2w_nsff), dtype=torch.float64)
    h, w = int(hw[0]), int(hw[1])
    xs, ys = torch.arange(w, dtype=torch.float64), torch.arange(h, dtype=torch.float64)
    border = torch.cat(
        [
            torch.stack([xs, torch.zeros_like(xs)], -1),
            torch.stack([xs, torch.full_like(xs, h - 1)], -1),
            torch.stack([torch.zeros_like(ys), ys], -1),
            torch.stack([torch.full_like(ys, w - 1), ys], -1),
        ]
    )
    ex, ey = 1.0, 1.0
    for pose in c2w:
        o, d = get_rays_at(K, pose, border)
        o_ndc, d_ndc = rays_to_ndc(o, d, K)
        ends = torch.cat([o_ndc[:, :2], (o_ndc + d_ndc)[:, :2]]).abs()
        ends = ends[torch.isfinite(ends).all(-1)]
        if len(ends):
            ex, ey = max(ex, float(ends[:, 0].max())), max(ey, float(ends[:, 1].max()))
    return ex, ey


# --------------------------------------------------------------------------- projection (torch)


def projection_matrices(K: Any, c2w_nsff: Any) -> Tensor:
    """Per-frame projection matrices NSFF world -> OpenCV pixel coordinates (for the flow loss).

    ``P = K [R | t]_w2c`` where ``[R | t]_w2c`` is the rigid inverse of ``c2w_nsff`` with its
    y and z rows negated (NSFF camera axes -> OpenCV camera axes, so ``(P X)_z`` is the camera
    depth, positive in front, in normalised units).

    Args:
        K: (3, 3) intrinsics of the frames (training resolution, integer pixel centres).
        c2w_nsff: (..., 3|4, 4) NSFF world, NSFF camera axes (tensor or array; a float64
            array gives float64).

    Returns:
        P (..., 3, 4), dtype/device of ``c2w_nsff``.
    """
    c2w = _float_tensor(c2w_nsff)
    K = _float_tensor(K, c2w)
    r_t = c2w[..., :3, :3].transpose(-1, -2)
    t = -(r_t @ c2w[..., :3, 3:4])
    w2c = torch.cat([r_t, t], dim=-1)
    flip = torch.tensor([1.0, -1.0, -1.0], dtype=c2w.dtype, device=c2w.device)
    return K @ (flip.unsqueeze(-1) * w2c)


def project_points_depth(P: Tensor, X: Tensor) -> tuple[Tensor, Tensor]:
    """Project NSFF-world points with :func:`projection_matrices` matrices.

    Args:
        P: (3, 4) or (..., 3, 4) projection matrices (broadcast against ``X``'s batch shape).
        X: (..., 3) NSFF-world points.

    Returns:
        uv (..., 2): OpenCV pixel coordinates ``(P X)_xy / (|(P X)_z| + 1e-8)`` (as nsff_pl's
        flow loss; the absolute value keeps the sign of a point behind the camera from flipping
        it); z (...,): camera depth ``(P X)_z``, normalised units, > 0 in front.
    """
    h = (P[..., :3] @ X.unsqueeze(-1)).squeeze(-1) + P[..., 3]
    z = h[..., 2]
    return h[..., :2] / (z.abs().unsqueeze(-1) + 1e-8), z


def project_points(P: Tensor, X: Tensor) -> Tensor:
    """Pixel coordinates (..., 2) of NSFF-world points X (..., 3); see
    :func:`project_points_depth`."""
    return project_points_depth(P, X)[0]

"""Camera conventions and small pose helpers.

Conventions used throughout the project (summed up in README.md, Conventions):

- ``c2w`` (N, 4, 4) camera-to-world matrices in **OpenCV axes** (x right, y down, z forward),
  in the SfM world frame (arbitrary scale). COLMAP's camera axes are the same, so
  ``c2w = inverse(cam_from_world)``.
- ``K`` (3, 3) pixel intrinsics at training resolution, in OpenCV's pixel convention: the
  centre of the pixel in row ``r``, column ``c`` is at ``(x, y) = (c, r)``, so a centred
  principal point is ``((W - 1) / 2, (H - 1) / 2)``. COLMAP puts pixel centres at
  ``(c + 0.5, r + 0.5)``; :func:`colmap_to_opencv_pixels` converts at the boundary.
- LLFF ``poses_bounds.npy`` rows: a 3x5 matrix ``[R | t | (h, w, f)]`` with rotation columns
  (down, right, backwards), then near and far (see :func:`nsff_core.model.io.write_poses_bounds`).
"""

from __future__ import annotations

import numpy as np

# --------------------------------------------------------------------------- rigid transforms


def rigid_matrix(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Stack a rotation (..., 3, 3) and translation (..., 3) into homogeneous (..., 4, 4)."""
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64)
    out = np.zeros(R.shape[:-2] + (4, 4))
    out[..., :3, :3] = R
    out[..., :3, 3] = t
    out[..., 3, 3] = 1.0
    return out


def invert_rigid(T: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms (..., 4, 4) (or (..., 3, 4)); returns (..., 4, 4).

    Uses ``[R | t]^-1 = [R^T | -R^T t]``, exact for rotations (no general matrix inverse).
    """
    T = np.asarray(T, dtype=np.float64)
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    Rt = np.swapaxes(R, -1, -2)
    return rigid_matrix(Rt, -np.einsum("...ij,...j->...i", Rt, t))


def camera_centres(c2w: np.ndarray) -> np.ndarray:
    """Camera centres (N, 3) in world units from ``c2w`` (N, 4, 4)."""
    return np.asarray(c2w, dtype=np.float64)[..., :3, 3]


def world_to_camera(c2w: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Transform world points (..., 3) into the camera frame of one ``c2w`` (4, 4); (..., 3).

    In OpenCV axes the third output column is the camera-z depth (positive in front).
    """
    w2c = invert_rigid(c2w)
    return np.asarray(points, dtype=np.float64) @ w2c[:3, :3].T + w2c[:3, 3]


def project(K: np.ndarray, c2w: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points (..., 3) into one camera ``c2w`` (4, 4).

    Returns:
        xy: (..., 2) pixel coordinates, OpenCV convention (see module docstring).
        z: (...,) camera-z depth in world units (points behind the camera have z <= 0).
    """
    pc = world_to_camera(c2w, points)
    z = pc[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = pc[..., :2] / z[..., None]
    xy = uv * np.array([K[0, 0], K[1, 1]]) + np.array([K[0, 2], K[1, 2]])
    return xy, z


# --------------------------------------------------------------------------- intrinsics


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """Pinhole ``K`` (3, 3) from focal lengths and principal point, in pixels."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def scale_intrinsics(K: np.ndarray, from_hw: tuple[int, int], to_hw: tuple[int, int]) -> np.ndarray:
    """Rescale ``K`` (OpenCV pixel convention) from an image of size ``from_hw`` (H, W) to
    ``to_hw``: the image edges stay fixed, so ``cx + 0.5`` scales by ``W_to / W_from``."""
    sy = to_hw[0] / from_hw[0]
    sx = to_hw[1] / from_hw[1]
    out = np.array(K, dtype=np.float64)
    out[0, :2] *= sx
    out[1, :2] *= sy
    out[0, 2] = (out[0, 2] + 0.5) * sx - 0.5
    out[1, 2] = (out[1, 2] + 0.5) * sy - 0.5
    out[2, :] = (0.0, 0.0, 1.0)
    return out


def colmap_to_opencv_pixels(xy: np.ndarray) -> np.ndarray:
    """Pixel coordinates (..., 2) from COLMAP's convention (pixel centres at c + 0.5) to
    OpenCV's (pixel centres at integers): subtract 0.5. Also converts a principal point."""
    return np.asarray(xy, dtype=np.float64) - 0.5


# --------------------------------------------------------------------------- LLFF


def c2w_from_poses_bounds(pb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Invert :func:`nsff_core.model.io.write_poses_bounds`.

    Args:
        pb: (N, 17) LLFF rows.

    Returns:
        c2w: (N, 4, 4) OpenCV axes; hwf: (N, 3) height, width, focal (pixels);
        bounds: (N, 2) near, far.
    """
    pb = np.asarray(pb, dtype=np.float64)
    mats = pb[:, :15].reshape(-1, 3, 5)
    R_llff, t, hwf = mats[:, :, :3], mats[:, :, 3], mats[:, :, 4]
    # LLFF columns (down, right, back) = OpenCV (y, x, -z)
    R = np.stack([R_llff[..., 1], R_llff[..., 0], -R_llff[..., 2]], axis=-1)
    return rigid_matrix(R, t), hwf, pb[:, 15:17]


# --------------------------------------------------------------------------- alignment


def umeyama(
    src: np.ndarray, dst: np.ndarray, with_scale: bool = True
) -> tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity transform from ``src`` to ``dst`` (Umeyama 1991).

    Finds ``s, R, t`` minimising ``sum_i |dst_i - (s R src_i + t)|^2`` with ``R`` a proper
    rotation (det +1).

    Args:
        src, dst: (M, D) corresponding points, M >= D (non-degenerate configuration).
        with_scale: if False, ``s`` is fixed to 1 (rigid alignment).

    Returns:
        s: scale; R: (D, D) rotation; t: (D,) translation.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2:
        raise ValueError(f"src and dst must be equal (M, D) arrays, got {src.shape}, {dst.shape}")
    m, d = src.shape
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / m
    U, S, Vt = np.linalg.svd(cov)
    E = np.eye(d)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        E[-1, -1] = -1.0
    R = U @ E @ Vt
    var_s = (xs**2).sum() / m
    s = float(np.trace(np.diag(S) @ E) / var_s) if with_scale and var_s > 0 else 1.0
    t = mu_d - s * R @ mu_s
    return s, R, t


def apply_similarity(s: float, R: np.ndarray, t: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``s R p + t`` for points (M, D)."""
    return s * np.asarray(points, dtype=np.float64) @ np.asarray(R).T + np.asarray(t)


def transform_c2w(s: float, R: np.ndarray, t: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """Map camera poses (N, 4, 4) through the world similarity ``x -> s R x + t``.

    Rotations become ``R R_c2w``, centres ``s R c + t`` (camera axes keep unit length).
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    return rigid_matrix(
        np.einsum("ij,njk->nik", R, c2w[:, :3, :3]),
        apply_similarity(s, R, t, c2w[:, :3, 3]),
    )


def path_length(centres: np.ndarray) -> float:
    """Length of the polyline through camera centres (N, 3): sum of consecutive distances."""
    c = np.asarray(centres, dtype=np.float64)
    return float(np.linalg.norm(np.diff(c, axis=0), axis=1).sum())


def forward_zoom(c2w: np.ndarray, far_depth: float) -> float:
    """How far the cameras move along their mean viewing direction, as a fraction of
    ``far_depth`` (same units as the camera centres): a surface at that depth changes its image
    size by about this fraction over the path. 0 for a camera moving sideways, 0.14 for the
    suite's 1.4 m dolly towards a wall 10 m away.

    Args:
        c2w: (N, 4, 4) camera-to-world, OpenCV axes (z forward).
        far_depth: depth of the far content (> 0).
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    if not far_depth > 0:
        raise ValueError(f"far_depth must be positive, got {far_depth}")
    view = c2w[:, :3, 2].mean(axis=0)
    view /= max(np.linalg.norm(view), 1e-12)
    along = c2w[:, :3, 3] @ view
    return float(np.ptp(along) / far_depth) if len(along) else 0.0


def project_to_rotation(M: np.ndarray) -> np.ndarray:
    """Nearest rotation (3, 3) (Frobenius norm, det +1) to a 3x3 matrix."""
    U, _, Vt = np.linalg.svd(M)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return U @ D @ Vt


def rotation_angle_deg(R_a: np.ndarray, R_b: np.ndarray) -> np.ndarray:
    """Angle in degrees of ``R_a^T R_b`` for rotations (..., 3, 3)."""
    rel = np.einsum("...ji,...jk->...ik", R_a, R_b)
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def pose_error(c2w_est: np.ndarray, c2w_gt: np.ndarray) -> dict[str, object]:
    """Camera error of estimated poses after similarity alignment of their centres to GT.

    The similarity (Umeyama on the centres) absorbs SfM's gauge freedom (world frame and scale).

    Args:
        c2w_est, c2w_gt: (N, 4, 4) OpenCV axes, N >= 3 with non-collinear centres for a unique
            rotation.

    Orientation errors use their own global rotation (the chordal mean of ``R_gt R_est^T``):
    a nearly straight camera path leaves the centre alignment free to spin about the path, which
    would otherwise show up as orientation error.

    Returns:
        dict with ``centre_rms`` (GT units), ``centre_errors`` (N,), ``path_length`` of the GT
        centres, ``centre_rms_rel`` = centre_rms / path_length, ``rot_errors_deg`` (N,) and
        ``rot_mean_deg`` after alignment, and the similarity ``s``, ``R``, ``t`` (est -> GT).
    """
    ce, cg = camera_centres(c2w_est), camera_centres(c2w_gt)
    s, R, t = umeyama(ce, cg)
    aligned = transform_c2w(s, R, t, c2w_est)
    err = np.linalg.norm(aligned[:, :3, 3] - cg, axis=1)
    R_est = np.asarray(c2w_est, dtype=np.float64)[:, :3, :3]
    R_gt = np.asarray(c2w_gt, dtype=np.float64)[:, :3, :3]
    R_rot = project_to_rotation(np.einsum("nij,nkj->ik", R_gt, R_est))
    rot = rotation_angle_deg(np.einsum("ij,njk->nik", R_rot, R_est), R_gt)
    length = path_length(cg)
    rms = float(np.sqrt(np.mean(err**2)))
    return {
        "centre_rms": rms,
        "centre_errors": err,
        "path_length": length,
        "centre_rms_rel": rms / length if length > 0 else float("inf"),
        "rot_errors_deg": rot,
        "rot_mean_deg": float(rot.mean()),
        "s": s,
        "R": R,
        "t": t,
    }


# --------------------------------------------------------------------------- interpolation


def interpolate_poses(times: np.ndarray, c2w: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Interpolate camera poses in time: linear centres, spherical-linear rotations.

    Args:
        times: (K,) strictly increasing times of the known poses (e.g. frame indices).
        c2w: (K, 4, 4) known poses.
        query: (M,) times to evaluate. Times outside ``[times[0], times[-1]]`` are clamped
            (the nearest end pose is repeated; no extrapolation).

    Returns:
        (M, 4, 4) poses.
    """
    from scipy.spatial.transform import Rotation, Slerp

    times = np.asarray(times, dtype=np.float64)
    c2w = np.asarray(c2w, dtype=np.float64)
    if len(times) == 0:
        raise ValueError("no known poses to interpolate")
    q = np.clip(np.asarray(query, dtype=np.float64), times[0], times[-1])
    if len(times) == 1:
        return np.repeat(c2w[:1], len(q), axis=0)
    if np.any(np.diff(times) <= 0):
        raise ValueError("times must be strictly increasing")
    centres = np.stack([np.interp(q, times, c2w[:, i, 3]) for i in range(3)], axis=-1)
    rots = Slerp(times, Rotation.from_matrix(c2w[:, :3, :3]))(q).as_matrix()
    return rigid_matrix(rots, centres)

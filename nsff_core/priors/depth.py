"""Monocular depth prior: per-frame relative disparity maps (rule ``depth``).

Writes ``disp_dir/{i:05d}.npy``: float32 (H, W) disparity (inverse depth) at training resolution,
one per frame of ``cameras.npz``. Backends are chosen by ``cfg.backend``:

- ``sparse`` (weights-free): the SfM points a frame observes on static pixels give exact
  disparities ``1 / z`` (z = camera-z depth in SfM world units) at their 2D observations; they
  are densified to a full map (:func:`densify`).
- ``dpt`` (pretrained): DPT monocular depth (:mod:`.dpt`, :func:`pretrained_depth`).

Each backend is a record of :mod:`nsff_core.priors.backends` whose run function takes the
arguments of :func:`compute_depth`.

The sparse backend's disparities are in inverse SfM units (scale-consistent across frames), a
pretrained backend's are relative per frame; consumers must treat the maps as known up to scale
and shift per frame.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from nsff_core.model import cameras as cam
from nsff_core.model import io

from ..config import DepthConfig
from ..errors import StageError
from . import backends
from .nets import pretrained as P
from .sfm import resize_mask_conservative

log = logging.getLogger(__name__)

STAGE = "depth"
DENSIFY_METHODS = ("edge_aware", "linear")


def compute_depth(
    frames_dir: str | os.PathLike,
    masks_dir: str | os.PathLike | None,
    sfm_dir: str | os.PathLike,
    cameras_path: str | os.PathLike,
    disp_dir: str | os.PathLike,
    cfg: DepthConfig = DepthConfig(),  # noqa: B008 (frozen dataclass)
    scene: str | None = None,
    *,
    frames_json: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Compute one disparity map per frame and write ``disp_dir`` atomically.

    Args:
        frames_dir: ``00000.png ...`` RGB frames at training resolution.
        masks_dir: same-named masks, 255 = dynamic, any size (resized to the frames;
            ``None`` = all static).
        sfm_dir: output of :func:`nsff_core.priors.sfm.run_sfm` (reads ``sparse/0``).
        cameras_path: ``cameras.npz`` (frame names, K, hw, c2w).
        disp_dir: output folder; replaced only when every frame succeeded.
        cfg: depth settings; ``cfg.backend`` picks the backend.
        scene: scene name for error messages.
        frames_json, weights: for the pretrained backend (dpt): ``frames.json`` (source frames)
            and the ``weights.json`` marker (checkpoint); see :mod:`nsff_core.priors.nets.pretrained`.

    Returns:
        A summary dict (backend, per-frame point counts, timings).
    """
    run = backends.run_function("depth", cfg.backend, fallback=_unknown_backend)
    return run(
        frames_dir,
        masks_dir,
        sfm_dir,
        cameras_path,
        disp_dir,
        cfg,
        scene,
        frames_json=frames_json,
        weights=weights,
    )


def _unknown_backend(
    frames_dir, masks_dir, sfm_dir, cameras_path, disp_dir, cfg: DepthConfig, scene, **_: Any
) -> dict[str, Any]:
    """What :func:`compute_depth` runs for a ``cfg.backend`` the registry does not know."""
    raise StageError(
        scene,
        STAGE,
        f"unknown depth backend '{cfg.backend}'",
        hint=f"use one of {sorted(backends.names('depth', pretrained=False))}",
    )


def sparse_depth(
    frames_dir: str | os.PathLike,
    masks_dir: str | os.PathLike | None,
    sfm_dir: str | os.PathLike,
    cameras_path: str | os.PathLike,
    disp_dir: str | os.PathLike,
    cfg: DepthConfig,
    scene: str | None = None,
    *,
    frames_json: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The ``sparse`` backend of :func:`compute_depth` (same arguments; ``frames_json`` and
    ``weights`` unused): densified SfM disparities of the frames of ``cameras.npz``."""
    t0 = time.perf_counter()
    cams = io.read_cameras(cameras_path)
    names = [str(n) for n in cams["names"]]
    frames = [Path(frames_dir) / n for n in names]
    missing = [p.name for p in frames if not p.is_file()]
    if missing:
        raise StageError(
            scene,
            STAGE,
            f"{len(missing)} frame(s) of cameras.npz are missing in {frames_dir}: "
            f"{', '.join(missing[:10])}",
            hint="rerun the frames and sfm rules",
        )
    with io.atomic_dir(disp_dir) as tmp:
        summary = _sparse_backend(
            frames,
            None if masks_dir is None else Path(masks_dir),
            Path(sfm_dir),
            cams,
            tmp,
            cfg,
            scene,
        )
    summary["backend"] = cfg.backend
    summary["time_s"] = round(time.perf_counter() - t0, 3)
    log.info("depth (%s) for %d frames in %.1f s", cfg.backend, len(names), summary["time_s"])
    return summary


# --------------------------------------------------------------------------- sparse backend


def _sparse_backend(
    frames: list[Path],
    masks_dir: Path | None,
    sfm_dir: Path,
    cams: dict[str, np.ndarray],
    out_dir: Path,
    cfg: DepthConfig,
    scene: str | None,
) -> dict[str, Any]:
    """Densified SfM disparities; writes ``out_dir/{i:05d}.npy``."""
    if cfg.densify not in DENSIFY_METHODS:
        raise StageError(
            scene,
            STAGE,
            f"unknown depth.densify '{cfg.densify}'",
            hint=f"use one of {list(DENSIFY_METHODS)}",
        )
    points = sparse_points(sfm_dir, cams, cfg.min_track_length, scene)
    h, w = (int(v) for v in cams["hw"])

    per_frame: list[tuple[np.ndarray, np.ndarray]] = []
    counts = []
    for i, p in enumerate(frames):
        xy, disp = points[i]
        if masks_dir is not None:
            # the SfM masks are made at their own analysis size (rule sfm_masks)
            dynamic = resize_mask_conservative(io.read_mask(masks_dir / p.name), (h, w))
            col = np.clip(np.rint(xy[:, 0]).astype(int), 0, w - 1)
            row = np.clip(np.rint(xy[:, 1]).astype(int), 0, h - 1)
            keep = ~dynamic[row, col]
            xy, disp = xy[keep], disp[keep]
        if cfg.outlier_ratio > 0:
            keep = reject_outliers(xy, disp, cfg.outlier_ratio)
            xy, disp = xy[keep], disp[keep]
        per_frame.append((xy, disp))
        counts.append(len(disp))
    few = [(p.name, c) for p, c in zip(frames, counts, strict=True) if c < cfg.min_points]
    if few:
        listed = ", ".join(f"{n} ({c} points)" for n, c in few[:20])
        raise StageError(
            scene,
            STAGE,
            f"{len(few)} frame(s) see fewer than {cfg.min_points} static SfM points: {listed}",
            hint="the sparse depth backend needs textured static background in every frame; "
            "use depth.backend: dpt, smaller dynamic masks, or lower depth.min_points",
        )

    for i, (p, (xy, disp)) in enumerate(zip(frames, per_frame, strict=True)):
        image = io.read_image(p, made_by="frames") if cfg.densify == "edge_aware" else None
        dense = densify(xy, disp, (h, w), cfg, image)
        io.write_disparity(out_dir / io.frame_name(i, ".npy"), dense)
        log.info("frame %s: %d static points -> dense disparity", p.name, len(disp))
    return {
        "densify": cfg.densify,
        "num_points": dict(zip([p.name for p in frames], counts, strict=True)),
        "min_points": int(min(counts)),
        "mean_points": float(np.mean(counts)),
    }


def sparse_points(
    sfm_dir: str | os.PathLike,
    cams: dict[str, np.ndarray],
    min_track_length: int = 3,
    scene: str | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """SfM points per frame of ``cameras.npz``, with their disparity in that frame.

    Registered frames use their own 2D observations (visibility as COLMAP found it).
    Frames without a pose in the model (interpolated in ``cameras.npz``) get every 3D point
    projected with their interpolated pose (no occlusion test). Only points observed by at
    least ``min_track_length`` frames are used.

    Returns:
        Per frame: ``xy`` (M, 2) float pixel coordinates at training resolution, OpenCV
        convention (pixel (row r, col c) centred at (c, r)), and ``disp`` (M,) = 1 / camera-z
        depth in inverse SfM units.
    """
    import pycolmap

    model = Path(sfm_dir) / "sparse" / "0"
    if not (model / "points3D.bin").is_file():
        raise StageError(scene, STAGE, f"no COLMAP model in {model}", hint="run the sfm rule first")
    rec = pycolmap.Reconstruction(str(model))
    by_name = {img.name: img for img in rec.images.values() if img.has_pose}
    camera = next(iter(rec.cameras.values()))
    h, w = (int(v) for v in cams["hw"])
    scale = np.array([w / camera.width, h / camera.height])
    # Points seen by only two frames are the least reliable (on the synthetic scene, the few
    # wildly wrong depths all had two-view tracks).
    ids = np.array(
        [k for k, p in rec.points3D.items() if p.track.length() >= min_track_length], np.int64
    )
    xyz = np.array([rec.points3D[int(k)].xyz for k in ids]).reshape(-1, 3)
    row_of = {int(k): r for r, k in enumerate(ids)}

    out = []
    for name, c2w in zip(cams["names"], cams["c2w"], strict=True):
        img = by_name.get(str(name))
        if img is not None:
            obs = [p for p in img.get_observation_points2D() if p.point3D_id in row_of]
            xy = np.array([p.xy for p in obs], dtype=np.float64).reshape(-1, 2) * scale
            xy = cam.colmap_to_opencv_pixels(xy)
            pts = xyz[[row_of[p.point3D_id] for p in obs]].reshape(-1, 3)
            z = cam.world_to_camera(c2w, pts)[:, 2]
        else:
            xy, z = cam.project(cams["K"], c2w, xyz)
        ok = (z > 0) & (xy[:, 0] > -0.5) & (xy[:, 0] < w - 0.5)
        ok &= (xy[:, 1] > -0.5) & (xy[:, 1] < h - 0.5)
        out.append((xy[ok], 1.0 / z[ok]))
    return out


def reject_outliers(
    xy: np.ndarray, disp: np.ndarray, max_ratio: float = 2.0, k: int = 8
) -> np.ndarray:
    """Flag points whose disparity disagrees with their image neighbours.

    A point is an outlier when its disparity differs from the median disparity of its ``k``
    nearest points in the image (pixels) by more than the factor ``max_ratio`` either way. A
    point on a small foreground object survives as long as most of its neighbours are on it.

    Args:
        xy: (M, 2) pixel positions. disp: (M,) positive disparities.

    Returns:
        (M,) bool, True = keep.
    """
    from scipy.spatial import cKDTree

    m = len(disp)
    if m <= k:
        return np.ones(m, bool)
    _, nb = cKDTree(xy).query(xy, k=k + 1)
    med = np.median(disp[nb[:, 1:]], axis=1)
    return np.abs(np.log(disp / med)) <= np.log(max_ratio)


# --------------------------------------------------------------------------- densification


def densify(
    xy: np.ndarray,
    values: np.ndarray,
    hw: tuple[int, int],
    cfg: DepthConfig = DepthConfig(),  # noqa: B008 (frozen dataclass)
    image: np.ndarray | None = None,
) -> np.ndarray:
    """Dense (H, W) float32 map from scattered samples.

    Args:
        xy: (M, 2) sample positions in pixels (pixel (r, c) centred at (c, r)).
        values: (M,) sample values (disparities).
        hw: output size (H, W).
        cfg: ``cfg.densify`` picks the method: ``edge_aware`` (needs ``image``) or ``linear``.
        image: (H, W, 3) uint8 RGB guide for ``edge_aware``.
    """
    if cfg.densify == "edge_aware":
        if image is None:
            raise ValueError("edge_aware densification needs the frame as a guide image")
        return densify_edge_aware(xy, values, image, cfg.smoothness, cfg.edge_sigma)
    return densify_linear(xy, values, hw, cfg.smooth_sigma)


def densify_linear(
    xy: np.ndarray, values: np.ndarray, hw: tuple[int, int], smooth_sigma: float = 2.0
) -> np.ndarray:
    """Linear interpolation on the Delaunay triangulation of the samples, nearest sample
    outside their convex hull, then a Gaussian blur of ``smooth_sigma`` pixels (0 = none).
    Returns (H, W) float32.
    """
    from scipy.interpolate import griddata
    from scipy.ndimage import gaussian_filter

    h, w = hw
    pts = np.asarray(xy, dtype=np.float64)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    dense = griddata(pts, values, (gx, gy), method="linear")
    hole = ~np.isfinite(dense)
    if hole.any():
        dense[hole] = griddata(pts, values, (gx[hole], gy[hole]), method="nearest")
    if smooth_sigma > 0:
        dense = gaussian_filter(dense, smooth_sigma, mode="nearest")
    return dense.astype(np.float32)


def densify_edge_aware(
    xy: np.ndarray,
    values: np.ndarray,
    image: np.ndarray,
    smoothness: float = 0.1,
    edge_sigma: float = 0.03,
) -> np.ndarray:
    """Edge-aware densification by weighted least squares (as in Levin et al.'s colorization).

    Minimises ``sum_k (d(p_k) - v_k)^2 + smoothness * sum_{i~j} w_ij (d_i - d_j)^2`` over the
    (H, W) map ``d``, with 4-neighbours ``i~j`` and ``w_ij = exp(-|I_i - I_j|^2 / (2
    edge_sigma^2))`` on the RGB guide scaled to [0, 1], so the map is smooth inside image regions
    and may jump at image edges. Each sample constrains its nearest pixel.

    Args:
        xy: (M, 2) sample positions in pixels (pixel (r, c) centred at (c, r)).
        values: (M,) sample values.
        image: (H, W, 3) uint8 RGB guide.

    Returns:
        (H, W) float32.
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import spsolve

    h, w = image.shape[:2]
    n = h * w
    guide = image.astype(np.float64) / 255.0
    idx = np.arange(n).reshape(h, w)

    rows, cols, wts = [], [], []
    for a, b, da, db in (
        (idx[:, :-1], idx[:, 1:], guide[:, :-1], guide[:, 1:]),
        (idx[:-1, :], idx[1:, :], guide[:-1, :], guide[1:, :]),
    ):
        d2 = ((da - db) ** 2).sum(-1)
        wt = np.maximum(np.exp(-d2 / (2 * edge_sigma**2)), 1e-4)
        rows.append(a.ravel())
        cols.append(b.ravel())
        wts.append(wt.ravel())
    r, c, wt = np.concatenate(rows), np.concatenate(cols), np.concatenate(wts)
    W = sp.coo_matrix((wt, (r, c)), shape=(n, n))
    W = W + W.T
    L = sp.diags(np.asarray(W.sum(1)).ravel()) - W

    col = np.clip(np.rint(xy[:, 0]).astype(int), 0, w - 1)
    row = np.clip(np.rint(xy[:, 1]).astype(int), 0, h - 1)
    pix = idx[row, col]
    data_w = np.bincount(pix, minlength=n).astype(np.float64)
    rhs = np.bincount(pix, weights=values, minlength=n)
    A = (sp.diags(data_w) + smoothness * L).tocsc()
    dense = spsolve(A, rhs)
    return dense.reshape(h, w).astype(np.float32)


def pretrained_depth(
    frames_dir: str | os.PathLike,
    masks_dir: str | os.PathLike | None,
    sfm_dir: str | os.PathLike,
    cameras_path: str | os.PathLike,
    disp_dir: str | os.PathLike,
    cfg: DepthConfig,
    scene: str | None = None,
    *,
    frames_json: str | os.PathLike | None = None,
    weights: str | os.PathLike | None = None,
) -> dict:
    """The ``dpt`` backend of :func:`compute_depth` (same arguments; it reads the source
    frames through ``frames_json``, not ``frames_dir``, and needs no masks or SfM): DPT
    disparity at source resolution, resized to the training size."""
    P.require(frames_json, "frames.json", "depth", scene)
    P.require(weights, "the weights.json marker", "depth", scene)
    from .frames import read_source_frames
    from .nets.dpt import compute_depth_dpt
    from .weights import resolve_from_marker

    return compute_depth_dpt(
        read_source_frames(frames_json, scene=scene, stage="depth"),
        disp_dir,
        P.training_hw(frames_json),
        cfg.dpt_model,
        resolve_from_marker(weights, cfg.dpt_model, scene, "depth"),
        scene=scene,
    )

"""Structure from motion with COLMAP (pycolmap): camera poses, intrinsics and scene bounds.

Pipeline (rule ``sfm``): dynamic pixels are masked out of SIFT extraction, one camera is shared
by all frames, features are matched exhaustively or sequentially, and the incremental mapper
reconstructs the scene; the model with the most registered frames is kept. Outputs:

- ``sfm_dir/database.db``, ``sfm_dir/sparse/0/*.bin`` (the COLMAP model),
  ``sfm_dir/colmap_masks/<frame>.png.png`` (COLMAP masks: 0 = ignore),
  ``sfm_dir/summary.json`` (registration, reprojection error, timings);
- ``cameras.npz`` and ``poses_bounds.npy`` (see :mod:`nsff_core.io`, :mod:`nsff_core.cameras`).

COLMAP images are mapped to frames **by file name**, never by image id.

``pycolmap`` is imported inside the functions, after every PNG of the stage is written. pycolmap
4.2.1's extension exports its own zlib symbols; when it is loaded before numpy and OpenCV
(e.g. ``import pycolmap, cv2``), OpenCV's PNG encoder later aborts the process in ``deflateEnd``
(reproduced here). With numpy imported first (always the case through ``nsff_core``) no crash was
seen, but the stage still writes its PNGs before importing pycolmap.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import cameras as cam
from .. import io
from ..config import SfmConfig
from ..errors import StageError

log = logging.getLogger(__name__)

STAGE = "sfm"
MATCHING_MODES = ("auto", "exhaustive", "sequential")
#: COLMAP camera models whose focal length and principal point we can read as a pinhole K;
#: distortion parameters of the radial/OpenCV models are dropped (with a warning)
CAMERA_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")
#: frames that see fewer points than this get the global near/far percentiles
MIN_POINTS_FOR_BOUNDS = 20


def run_sfm(
    frames_dir: str | os.PathLike,
    masks_dir: str | os.PathLike | None,
    sfm_dir: str | os.PathLike,
    cameras_path: str | os.PathLike,
    poses_bounds_path: str | os.PathLike,
    cfg: SfmConfig = SfmConfig(),  # noqa: B008 (frozen dataclass)
    scene: str | None = None,
) -> dict[str, Any]:
    """Run COLMAP on ``frames_dir`` and write the model, ``cameras.npz`` and ``poses_bounds.npy``.

    Args:
        frames_dir: ``00000.png ...`` RGB frames at training resolution (lexical order = time).
        masks_dir: same-named 8-bit masks, 255 = dynamic (ignored by feature extraction);
            ``None`` = use every pixel.
        sfm_dir: folder for the COLMAP database, model and ``summary.json`` (replaced
            atomically: written only when SfM succeeds).
        cameras_path, poses_bounds_path: the camera files (written atomically, last).
        cfg: SfM settings.
        scene: scene name for error messages.

    Returns:
        The summary dict also written to ``sfm_dir/summary.json``.

    Raises:
        StageError: no frames, bad masks or settings, or fewer than
            ``cfg.min_registered_fraction`` of the frames registered (naming the failed frames).
    """
    t_start = time.perf_counter()
    frames_dir, sfm_dir = Path(frames_dir), Path(sfm_dir)
    cameras_path, poses_bounds_path = Path(cameras_path), Path(poses_bounds_path)
    # A failed run must not leave camera files of an earlier run that look like its result.
    cameras_path.unlink(missing_ok=True)
    poses_bounds_path.unlink(missing_ok=True)

    frames = io.list_frames(frames_dir)
    names = [p.name for p in frames]
    _check_inputs(frames, cfg, scene, frames_dir)
    hw = io.read_image(frames[0], made_by="frames").shape[:2]
    timings: dict[str, float] = {}

    with io.atomic_dir(sfm_dir) as tmp:
        t0 = time.perf_counter()
        colmap_masks = None
        if masks_dir is not None:
            colmap_masks = tmp / "colmap_masks"
            _write_colmap_masks(frames, Path(masks_dir), colmap_masks, hw, scene)
        timings["masks"] = time.perf_counter() - t0

        rec, info = _reconstruct(frames_dir, names, colmap_masks, tmp, cfg, timings)
        registered = _registered_by_name(rec, names)
        n_reg = int(registered.sum())
        failed = [n for n, r in zip(names, registered, strict=True) if not r]
        frac = n_reg / len(names)
        log.info("registered %d / %d frames (%.0f%%)", n_reg, len(names), 100 * frac)
        if rec is None or frac < cfg.min_registered_fraction or n_reg < 2:
            raise StageError(
                scene,
                STAGE,
                f"only {n_reg} of {len(names)} frames registered in the SfM model "
                f"(need {cfg.min_registered_fraction:.0%}); frames that failed: "
                f"{_short_list(failed)}",
                hint="the frames need more texture and more camera parallax (a camera that only "
                "rotates or barely moves cannot be reconstructed); check that the dynamic masks "
                "do not cover most of the image; take every k-th frame (frames stride) for more "
                "motion between frames; or lower sfm.min_registered_fraction to accept "
                "interpolated poses for the failed frames.",
            )
        if failed:
            log.warning(
                "%d frame(s) did not register; their poses are interpolated in time: %s",
                len(failed),
                _short_list(failed),
            )

        t0 = time.perf_counter()
        sparse0 = tmp / "sparse" / "0"
        sparse0.mkdir(parents=True)
        rec.write(str(sparse0))
        geom = _cameras_from_reconstruction(rec, names, registered, hw, cfg)
        timings["export"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start

        summary = {
            "scene": scene,
            "num_frames": len(names),
            "num_registered": n_reg,
            "registered_fraction": frac,
            "unregistered": failed,
            "mean_reprojection_error_px": float(rec.compute_mean_reprojection_error()),
            "num_points3D": int(rec.num_points3D()),
            "mean_track_length": float(rec.compute_mean_track_length()),
            "mean_observations_per_image": float(rec.compute_mean_observations_per_reg_image()),
            "focal_px": float(0.5 * (geom["K"][0, 0] + geom["K"][1, 1])),
            "K": geom["K"].tolist(),
            "hw": list(hw),
            "camera_model": cfg.camera_model,
            **info,
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))

    with io.atomic_file(poses_bounds_path) as p:
        io.write_poses_bounds(p, geom["c2w"], geom["K"], hw, geom["near"], geom["far"])
    with io.atomic_file(cameras_path) as p:
        io.write_cameras(
            p, geom["c2w"], geom["K"], hw, geom["near"], geom["far"], names, registered
        )
    log.info(
        "SfM done in %.1f s: %d/%d registered, reprojection error %.3f px, %d points, f = %.1f px",
        timings["total"],
        n_reg,
        len(names),
        summary["mean_reprojection_error_px"],
        summary["num_points3D"],
        summary["focal_px"],
    )
    return summary


# --------------------------------------------------------------------------- steps


def _check_inputs(frames: list[Path], cfg: SfmConfig, scene: str | None, frames_dir: Path) -> None:
    if len(frames) < 2:
        raise StageError(
            scene,
            STAGE,
            f"SfM needs at least 2 frames, found {len(frames)} PNG frame(s) in {frames_dir}",
            hint="check the frames rule output and the frame range of the scene",
        )
    if cfg.matching not in MATCHING_MODES:
        raise StageError(
            scene,
            STAGE,
            f"unknown sfm.matching '{cfg.matching}'",
            hint=f"use one of {list(MATCHING_MODES)}",
        )
    if cfg.camera_model not in CAMERA_MODELS:
        raise StageError(
            scene,
            STAGE,
            f"unsupported sfm.camera_model '{cfg.camera_model}'",
            hint=f"use one of {list(CAMERA_MODELS)} (SIMPLE_PINHOLE is recommended)",
        )
    if cfg.camera_model not in ("SIMPLE_PINHOLE", "PINHOLE"):
        log.warning(
            "camera model %s has distortion parameters; they are fitted but dropped from K",
            cfg.camera_model,
        )


def _write_colmap_masks(
    frames: list[Path], masks_dir: Path, out_dir: Path, hw: tuple[int, int], scene: str | None
) -> None:
    """Write COLMAP masks ``out_dir/<frame name>.png`` (255 = use, 0 = ignore = dynamic)."""
    out_dir.mkdir(parents=True)
    missing = [p.name for p in frames if not (masks_dir / p.name).is_file()]
    if missing:
        raise StageError(
            scene,
            STAGE,
            f"{len(missing)} frame(s) have no mask in {masks_dir}: {_short_list(missing)}",
            hint="run the masks rule (or set the masks backend to 'none')",
        )
    for p in frames:
        dynamic = io.read_mask(masks_dir / p.name)
        if dynamic.shape != tuple(hw):
            raise StageError(
                scene,
                STAGE,
                f"mask {masks_dir / p.name} is {dynamic.shape[1]}x{dynamic.shape[0]}, "
                f"frames are {hw[1]}x{hw[0]}",
                hint="masks must be at training resolution; rerun the masks rule",
            )
        io.write_mask(out_dir / f"{p.name}.png", ~dynamic)


def _reconstruct(
    frames_dir: Path,
    names: list[str],
    mask_dir: Path | None,
    work: Path,
    cfg: SfmConfig,
    timings: dict[str, float],
) -> tuple[Any, dict[str, Any]]:
    """Extract, match and map; return the largest model (or None) and facts for the summary."""
    import pycolmap

    db = work / "database.db"
    n = len(names)

    t0 = time.perf_counter()
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = cfg.camera_model
    if mask_dir is not None:
        reader.mask_path = str(mask_dir)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = cfg.num_threads
    extraction.sift.max_num_features = cfg.max_num_features
    log.info("extracting SIFT features from %d frames (masks: %s)", n, mask_dir is not None)
    pycolmap.extract_features(
        db,
        frames_dir,
        image_names=names,
        camera_mode=pycolmap.CameraMode.SINGLE,
        reader_options=reader,
        extraction_options=extraction,
        device=pycolmap.Device.cpu,
    )
    timings["extract"] = time.perf_counter() - t0
    log.info("feature extraction: %.1f s", timings["extract"])

    t0 = time.perf_counter()
    mode = cfg.matching
    if mode == "auto":
        mode = "exhaustive" if n <= cfg.exhaustive_max_frames else "sequential"
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = cfg.num_threads
    log.info("%s matching of %d frames", mode, n)
    if mode == "exhaustive":
        pycolmap.match_exhaustive(db, matching_options=matching, device=pycolmap.Device.cpu)
    else:
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = cfg.sequential_overlap
        pairing.num_threads = cfg.num_threads
        pycolmap.match_sequential(
            db, matching_options=matching, pairing_options=pairing, device=pycolmap.Device.cpu
        )
    timings["match"] = time.perf_counter() - t0
    log.info("matching: %.1f s", timings["match"])

    t0 = time.perf_counter()
    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = cfg.num_threads
    opts.random_seed = cfg.random_seed
    opts.mapper.random_seed = cfg.random_seed
    opts.triangulation.random_seed = cfg.random_seed
    opts.ba_refine_principal_point = False
    models_dir = work / "models"
    models_dir.mkdir()
    log.info("incremental mapping")
    models = pycolmap.incremental_mapping(db, frames_dir, models_dir, options=opts)
    timings["map"] = time.perf_counter() - t0
    log.info("mapping: %.1f s, %d model(s)", timings["map"], len(models))
    shutil.rmtree(models_dir, ignore_errors=True)

    sizes = {int(k): int(r.num_reg_images()) for k, r in models.items()}
    best = max(models.values(), key=lambda r: r.num_reg_images()) if models else None
    return best, {"matching": mode, "model_sizes": sizes, "num_models": len(models)}


def _registered_by_name(rec: Any, names: list[str]) -> np.ndarray:
    """(N,) bool: frame ``names[i]`` has a pose in ``rec`` (matched by image name)."""
    if rec is None:
        return np.zeros(len(names), bool)
    have = {img.name for img in rec.images.values() if img.has_pose}
    return np.array([n in have for n in names], bool)


def _cameras_from_reconstruction(
    rec: Any, names: list[str], registered: np.ndarray, hw: tuple[int, int], cfg: SfmConfig
) -> dict[str, np.ndarray]:
    """c2w (N,4,4) OpenCV axes, K (3,3) at ``hw``, near/far (N,) from a COLMAP model."""
    by_name = {img.name: img for img in rec.images.values() if img.has_pose}
    camera = next(iter(rec.cameras.values()))
    cx, cy = cam.colmap_to_opencv_pixels([camera.principal_point_x, camera.principal_point_y])
    K = cam.intrinsics_matrix(camera.focal_length_x, camera.focal_length_y, cx, cy)
    K = cam.scale_intrinsics(K, (camera.height, camera.width), hw)

    n = len(names)
    c2w = np.zeros((n, 4, 4))
    frame_depths: list[np.ndarray | None] = [None] * n
    xyz_all = {pid: p.xyz for pid, p in rec.points3D.items()}
    for i, name in enumerate(names):
        if not registered[i]:
            continue
        img = by_name[name]
        w2c = np.eye(4)
        w2c[:3] = img.cam_from_world().matrix()
        c2w[i] = cam.invert_rigid(w2c)
        pids = [p.point3D_id for p in img.get_observation_points2D()]
        if pids:
            pts = np.array([xyz_all[pid] for pid in pids])
            frame_depths[i] = pts @ w2c[:3, :3].T[:, 2] + w2c[2, 3]

    idx = np.flatnonzero(registered)
    if not registered.all():
        missing = np.flatnonzero(~registered)
        c2w[missing] = cam.interpolate_poses(idx.astype(float), c2w[idx], missing.astype(float))

    all_depths = np.concatenate([d for d in frame_depths if d is not None] + [np.zeros(0)])
    all_depths = all_depths[all_depths > 0]
    if all_depths.size == 0:
        raise ValueError("the SfM model has no 3D points in front of its cameras")
    g_near = float(np.percentile(all_depths, cfg.near_percentile))
    g_far = float(np.percentile(all_depths, cfg.far_percentile))
    near, far = np.full(n, g_near), np.full(n, g_far)
    for i, d in enumerate(frame_depths):
        if d is None:
            continue
        d = d[d > 0]
        if len(d) >= MIN_POINTS_FOR_BOUNDS:
            near[i] = np.percentile(d, cfg.near_percentile)
            far[i] = np.percentile(d, cfg.far_percentile)
    return {"c2w": c2w, "K": K, "near": near, "far": far}


# --------------------------------------------------------------------------- helpers


def _short_list(items: list[str], limit: int = 20) -> str:
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", ... ({len(items) - limit} more)"

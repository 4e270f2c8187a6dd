"""Structure from motion with COLMAP (pycolmap): camera poses, intrinsics and scene bounds.

Pipeline (rule ``sfm``):

1. **Images.** With ``sfm.max_size`` set (default 1280) and the scene's ``frames.json`` given,
   SfM runs on the selected *source* frames (:func:`~nsff_core.priors.frames.read_source_frames`),
   scaled down so that the long side is at most ``max_size`` (INTER_AREA). Small training
   frames (e.g. 320 wide) leave SIFT too few features for a stable focal length, and the focal
   length then depends on the training width; at source resolution every training width sees
   the same SfM. When that size equals the training size, or ``max_size`` is null, the
   training frames are used as they are.
2. **Masks.** Dynamic pixels (the masks of rule sfm_masks, 255 = dynamic, made at the analysis
   size ``sfm.mask_size``; see :mod:`nsff_core.priors.sfm_masks`) are resized to the SfM
   size conservatively (:func:`resize_mask_conservative`: an SfM pixel is dynamic when its
   footprint touches a dynamic training pixel) and given to SIFT extraction as COLMAP masks.
3. **Features and matching:** one camera shared by all frames (``sfm.camera_model``), exhaustive
   or sequential matching.
4. **Mapping with retries** (:func:`_map_with_retries`). The incremental mapper starts from the
   default options, keeping at most ``sfm.max_models`` models (COLMAP's default is 50: after
   a split it keeps starting models from the frames left over, and on a panning clip most of
   those starts fail after a search over every pair; measured on a 41-frame pan, the first
   run took 384 s with 25 starts and 242 s with 3 models kept, with the same final model,
   which came from the retry below). When its largest model misses frames (the mapper split
   the sequence, or gave up on frames) and no focal prior is given, mapping restarts with
   relaxed options (:data:`RELAXED_MAPPER`) and the focal length *held* at COLMAP's initial
   guess (1.2 x the long side): on a short-baseline clip (a camera panning to follow a mover) a free focal
   length drifts during mapping and later frames stop fitting, while a held one keeps the
   model consistent; the final bundle adjustment of step 5 then decides whether the data fix
   the focal length. A model that still misses frames is continued with relaxed
   registration options, which registers the frames of the other models into it; then the
   first model is continued the same way; last, mapping restarts with relaxed options (focal
   as in the first run) and is continued. The model with the most registered frames (then
   the most 3D points) is kept. pycolmap 4.2.1 exposes no model merger, so split models are
   joined by registering their frames into the largest model, not by aligning the models.
5. **Focal length.** Without a prior, COLMAP starts at 1.2 x the long side and bundle adjustment
   refines it during mapping. With ``sfm.focal_prior_fov`` (horizontal field of view,
   degrees), the shared camera starts at that focal length, marked as a prior, and mapping
   keeps it fixed (a calibrated start: essential matrices instead of fundamental ones). When
   the focal length was held during mapping (a prior, or the held retry of step 4), a global
   bundle adjustment with the focal length free is tried only when the model has enough
   parallax (the median over 3D points of the largest angle between their viewing rays is at
   least :data:`REFINE_MIN_PARALLAX_DEG`), and its result is kept only when it lowers the mean
   reprojection error by at least :data:`REFINE_MIN_ERROR_GAIN`. Otherwise the focal length
   is poorly constrained (a panning, slowly drifting or sideways-translating camera: the
   reprojection error barely changes over a wide range of focal lengths, and a free focal
   length drifts with the noise) and the held value is kept. Either way a horizontal field
   of view outside :data:`FOV_RANGE_DEG` is logged as a warning.
6. **Export.** K is scaled from the SfM size to the training size with the pixel-centre
   convention (:func:`training_intrinsics`): pixel (x, y) at integer coordinates is a pixel
   centre, so ``x_train = (x_sfm + 0.5) * W_train / W_sfm - 0.5`` (and the same in y with the
   heights). The training size is rounded to even numbers, so its aspect ratio can differ
   slightly from the source's: fx and fy are then scaled by their own factors and differ.

Outputs:

- ``sfm_dir/database.db``, ``sfm_dir/sparse/0/*.bin`` (the COLMAP model, at the SfM size),
  ``sfm_dir/colmap_masks/<frame>.png.png`` (COLMAP masks at the SfM size: 0 = ignore),
  ``sfm_dir/summary.json`` (registration, SfM size, focal length and field of view, mapping
  attempts, reprojection error, timings);
- ``cameras.npz`` and ``poses_bounds.npy`` at training resolution (see :mod:`nsff_core.model.io`,
  :mod:`nsff_core.model.cameras`).

COLMAP images are mapped to frames **by file name**, never by image id: the SfM images carry
the training frames' names (``00000.png`` ...).

``pycolmap`` is imported inside the functions, after every PNG of the stage is written. pycolmap
4.2.1's extension exports its own zlib symbols; when it is loaded before numpy and OpenCV
(e.g. ``import pycolmap, cv2``), OpenCV's PNG encoder later aborts the process in ``deflateEnd``
(reproduced here). With numpy imported first (always the case through ``nsff_core``) no crash was
seen, but the stage still writes its PNGs before importing pycolmap.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from nsff_core.model import cameras as cam
from nsff_core.model import io

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
#: horizontal fields of view (degrees) outside this range are implausible for video: warned
FOV_RANGE_DEG = (30.0, 110.0)
#: with a focal prior, bundle adjustment refines the focal length only when the median (over
#: 3D points) of the largest angle between a point's viewing rays reaches this, in degrees
REFINE_MIN_PARALLAX_DEG = 3.0
#: ... and keeps the refined focal length only when that lowers the mean reprojection error by
#: at least this fraction. Measured on synthetic sideways clips whose focal length the data do
#: not fix: 0.1-1 % (while the focal length moved 6-16 %); with a 15 deg wrong prior on a
#: hand-held clip with rotation: 8 %
REFINE_MIN_ERROR_GAIN = 0.02
#: the focal length's sensitivity is measured by bundle-adjusting copies of the model with the
#: focal length fixed at these factors of the estimate (poses and points free)
FOCAL_PROBE_FACTORS = (0.8, 1.25)
#: below this relative rise of the mean reprojection error at either probe the clip does not
#: fix the focal length (warned; diagnose's ``focal`` check). Measured rises: synthetic clips
#: with a well-fitted focal length (error 0.2 %) 16 %; davis_rollercoaster 3.7 %, davis_bear
#: 5.1 %, sam2_bedroom 1.8 %; smooth-textured synthetic clips whose focal length came out 7-16 %
#: off (a sideways camera without rotation fixes no focal length at all) 0.3-0.4 %
FOCAL_MIN_SENSITIVITY = 0.01
#: without a prior, a focal length that fails that test is searched over this ladder of
#: horizontal fields of view (degrees; geometric in the focal length, ratio about 1.25): the
#: model bundle-adjusted with the focal length held at each, the lowest reprojection error wins.
#: A free focal length can stall in a flat valley far from the error's minimum: on
#: davis_bear (854x480) free bundle adjustment ended at 382 px (96 deg) with the error flat to
#: 0.03 % from 191 to 956 px, while held at 1,912 px (25 deg) it is 4.3 % lower
FOCAL_SCAN_FOV_DEG = (120.0, 15.0)
FOCAL_SCAN_RATIO = 1.25
#: ... and the search's best replaces the estimate only when its error is lower by this fraction
#: (a flat error, a clip that fixes no focal length, keeps the estimate)
FOCAL_SCAN_MIN_GAIN = 0.02
#: a bundle adjustment whose mean reprojection error ends above this (px) has diverged (a focal
#: length far too short puts points behind the cameras: errors of 1e154 px)
DIVERGED_ERROR_PX = 1e3
#: mapper options of the retries (COLMAP defaults in comments): a smaller initial triangulation
#: angle and fewer inliers for the initial pair (short baselines of video), and fewer, less
#: clean 2D-3D inliers with more trials for registering the next frame (masked movers, blur)
RELAXED_MAPPER = {
    "init_min_num_inliers": 50,  # 100
    "init_min_tri_angle": 4.0,  # 16
    "init_max_reg_trials": 4,  # 2
    "abs_pose_min_num_inliers": 15,  # 30
    "abs_pose_min_inlier_ratio": 0.15,  # 0.25
    "max_reg_trials": 6,  # 3
}


def run_sfm(
    frames_dir: str | os.PathLike,
    masks_dir: str | os.PathLike | None,
    sfm_dir: str | os.PathLike,
    cameras_path: str | os.PathLike,
    poses_bounds_path: str | os.PathLike,
    cfg: SfmConfig = SfmConfig(),  # noqa: B008 (frozen dataclass)
    scene: str | None = None,
    *,
    frames_json: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Run COLMAP on the scene's frames and write the model, ``cameras.npz`` and
    ``poses_bounds.npy``.

    Args:
        frames_dir: ``00000.png ...`` RGB frames at training resolution (lexical order = time).
        masks_dir: same-named 8-bit masks at training resolution, 255 = dynamic (ignored by
            feature extraction); ``None`` = use every pixel.
        sfm_dir: folder for the COLMAP database, model and ``summary.json`` (replaced
            atomically: written only when SfM succeeds).
        cameras_path, poses_bounds_path: the camera files, at training resolution (written
            atomically, last).
        cfg: SfM settings.
        scene: scene name for error messages.
        frames_json: the frames rule's record of the source; with ``cfg.max_size`` set, SfM
            runs on the source frames capped to ``max_size`` (long side). ``None`` = on the
            training frames.

    Returns:
        The summary dict also written to ``sfm_dir/summary.json``.

    Raises:
        StageError: no frames, bad masks or settings, a changed source, or fewer than
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
        images_dir, sfm_hw = _sfm_images(frames, frames_json, tmp / "images", cfg, scene)
        timings["images"] = time.perf_counter() - t0
        if sfm_hw != hw:
            log.info(
                "SfM on the source frames at %dx%d (training frames %dx%d)",
                sfm_hw[1],
                sfm_hw[0],
                hw[1],
                hw[0],
            )

        t0 = time.perf_counter()
        colmap_masks = None
        if masks_dir is not None:
            colmap_masks = tmp / "colmap_masks"
            _write_colmap_masks(frames, Path(masks_dir), colmap_masks, hw, sfm_hw, scene)
        timings["masks"] = time.perf_counter() - t0

        rec, info = _reconstruct(images_dir, names, colmap_masks, tmp, cfg, sfm_hw, timings)
        shutil.rmtree(tmp / "images", ignore_errors=True)  # a copy of the source frames
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
                f"(need {cfg.min_registered_fraction:.0%}) after {len(info['attempts'])} "
                f"mapping attempt(s); frames that failed: {_short_list(failed)}",
                hint="the frames need more texture and more camera parallax (a camera that only "
                "rotates or barely moves cannot be reconstructed); check that the dynamic masks "
                "do not cover most of the image; take every k-th frame (frames stride) for more "
                "motion between frames; give the lens's horizontal field of view as "
                "sfm.focal_prior_fov; or lower sfm.min_registered_fraction to accept "
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

        hfov = horizontal_fov_deg(geom["K"], hw[1])
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
            "hfov_deg": hfov,
            "K": geom["K"].tolist(),
            "hw": list(hw),
            "sfm_size": [int(sfm_hw[1]), int(sfm_hw[0])],
            "sfm_images": "training frames" if images_dir == frames_dir else "source frames",
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
        "SfM done in %.1f s: %d/%d registered, reprojection error %.3f px, %d points, "
        "f = %.1f px at %dx%d (horizontal field of view %.1f deg)",
        timings["total"],
        n_reg,
        len(names),
        summary["mean_reprojection_error_px"],
        summary["num_points3D"],
        summary["focal_px"],
        hw[1],
        hw[0],
        hfov,
    )
    _warn_fov(hfov, cfg, scene)
    _warn_focal_sensitivity(summary["focal"], hfov, cfg, scene)
    return summary


# --------------------------------------------------------------------------- intrinsics


def training_intrinsics(
    focal_xy: tuple[float, float],
    principal_point_colmap: tuple[float, float],
    sfm_hw: tuple[int, int],
    hw: tuple[int, int],
) -> np.ndarray:
    """K (3, 3) at the training size ``hw`` (H, W), OpenCV pixel convention, from a COLMAP
    camera of an image of ``sfm_hw`` (H, W).

    COLMAP puts pixel centres at ``c + 0.5``; the result has them at integers. Both images span
    the same field of view edge to edge, so ``x_train = (x_sfm + 0.5) * W / W_sfm - 0.5`` and
    ``y_train = (y_sfm + 0.5) * H / H_sfm - 0.5``; fx and fy scale by their own factors (the
    training size is rounded to even numbers, so its aspect ratio can differ from the SfM
    image's).

    Args:
        focal_xy: (fx, fy) in SfM pixels.
        principal_point_colmap: (cx, cy) in SfM pixels, COLMAP convention.
    """
    cx, cy = cam.colmap_to_opencv_pixels(principal_point_colmap)
    K = cam.intrinsics_matrix(focal_xy[0], focal_xy[1], cx, cy)
    return cam.scale_intrinsics(K, sfm_hw, hw)


def horizontal_fov_deg(K: np.ndarray, width: int) -> float:
    """Horizontal field of view in degrees of an image ``width`` pixels wide with focal
    length ``K[0, 0]`` (pixels), edge to edge."""
    return float(np.degrees(2.0 * np.arctan(0.5 * width / K[0, 0])))


def focal_from_fov(fov_deg: float, width: int) -> float:
    """Focal length in pixels giving a horizontal field of view ``fov_deg`` over ``width``."""
    return 0.5 * width / math.tan(math.radians(fov_deg) / 2.0)


def _warn_fov(hfov: float, cfg: SfmConfig, scene: str | None) -> None:
    lo, hi = FOV_RANGE_DEG
    if lo <= hfov <= hi:
        return
    what = (
        "give the lens's horizontal field of view as sfm.focal_prior_fov"
        if cfg.focal_prior_fov is None
        else f"check sfm.focal_prior_fov ({cfg.focal_prior_fov:g} deg)"
    )
    log.warning(
        "scene %s: the SfM focal length gives a horizontal field of view of %.1f deg, outside "
        "the plausible %g-%g deg: the focal length is probably wrong (too little camera "
        "translation to measure it); %s, or use a clip in which the camera moves sideways",
        scene,
        hfov,
        lo,
        hi,
        what,
    )


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
    if cfg.max_size is not None and not 32 <= cfg.max_size <= 8192:
        raise StageError(
            scene,
            STAGE,
            f"sfm.max_size must be 32 to 8192 pixels or null, got {cfg.max_size}",
            hint="set sfm.max_size to the long side SfM should work at (default 1280)",
        )
    if cfg.focal_prior_fov is not None and not 1 < cfg.focal_prior_fov < 179:
        raise StageError(
            scene,
            STAGE,
            f"sfm.focal_prior_fov must be a horizontal field of view between 1 and 179 "
            f"degrees or null, got {cfg.focal_prior_fov}",
            hint="give the lens's horizontal field of view in degrees (phones: about 65-75)",
        )
    if cfg.max_models < 1:
        raise StageError(
            scene,
            STAGE,
            f"sfm.max_models must be at least 1, got {cfg.max_models}",
            hint="set sfm.max_models to the models the first mapping run may keep (default 3)",
        )
    if cfg.camera_model not in ("SIMPLE_PINHOLE", "PINHOLE"):
        log.warning(
            "camera model %s has distortion parameters; they are fitted but dropped from K",
            cfg.camera_model,
        )


def capped_size(wh: tuple[int, int], max_size: int) -> tuple[int, int]:
    """(w, h) of a (w, h) frame scaled down so that its long side is at most ``max_size``:
    the size :func:`~nsff_core.priors.nets.images.cap_size` gives with ``(max_size, max_size)``."""
    from .nets.images import capped_size as capped

    return capped(wh, (max_size, max_size))


def _sfm_images(
    frames: list[Path],
    frames_json: str | os.PathLike | None,
    out_dir: Path,
    cfg: SfmConfig,
    scene: str | None,
) -> tuple[Path, tuple[int, int]]:
    """The folder of the images SfM runs on, and their (H, W).

    The source frames capped to ``cfg.max_size``, written to ``out_dir`` under the training
    frames' names; or the training frames' folder when ``max_size`` is null, no
    ``frames_json`` is given, or the capped source has the training size (the frames rule
    then made the same pixels).
    """
    from .frames import read_source_frames

    frames_dir = frames[0].parent
    hw = io.read_image(frames[0], made_by="frames").shape[:2]
    if cfg.max_size is None or frames_json is None:
        return frames_dir, hw
    try:
        info = json.loads(Path(frames_json).read_text())
        source_wh = (int(info["source_size"][0]), int(info["source_size"][1]))
        count = int(info["count"])
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise StageError(
            scene,
            STAGE,
            f"cannot read the source record {frames_json}: {err}",
            hint=f"delete {frames_json} and rerun: rule 'frames' writes it again",
        ) from err
    w, h = capped_size(source_wh, cfg.max_size)
    if (h, w) == hw:
        return frames_dir, hw
    if count != len(frames):
        raise StageError(
            scene,
            STAGE,
            f"{frames_json} lists {count} frames but {frames_dir} holds {len(frames)}",
            hint="rerun the frames rule",
        )
    out_dir.mkdir(parents=True)
    cap = (cfg.max_size, cfg.max_size)
    for p, rgb in zip(frames, read_source_frames(frames_json, cap, scene, STAGE), strict=True):
        io.write_image(out_dir / p.name, rgb)
    return out_dir, (h, w)


def resize_mask_conservative(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize a bool (H, W) mask to ``hw`` so that every output pixel whose footprint touches
    a True input pixel is True (no dynamic pixel is lost).

    Enlarging: nearest neighbour with pixel-centre alignment, then a 3x3 dilation. An input
    pixel spans at least one output pixel, and an output pixel that overlaps it without having
    its centre in it is the neighbour (also diagonally) of one that has. Shrinking: area
    averaging, any share > 0 counts.
    """
    import cv2

    h0, w0 = mask.shape
    h, w = hw
    if (h, w) == (h0, w0):
        return mask.copy()
    m = mask.astype(np.uint8)
    if h >= h0 and w >= w0:
        up = cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
        return cv2.dilate(up, np.ones((3, 3), np.uint8)) > 0
    return cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) > 0


def same_aspect(hw_a: tuple[int, ...], hw_b: tuple[int, ...], tol: float = 0.02) -> bool:
    """Whether two (H, W, ...) shapes have aspect ratios within ``tol`` (relative) of each
    other: sizes that differ only by scaling and rounding to whole pixels."""
    a = hw_a[1] / hw_a[0]
    b = hw_b[1] / hw_b[0]
    return abs(a / b - 1.0) <= tol


def _write_colmap_masks(
    frames: list[Path],
    masks_dir: Path,
    out_dir: Path,
    hw: tuple[int, int],
    sfm_hw: tuple[int, int],
    scene: str | None,
) -> None:
    """Write COLMAP masks ``out_dir/<frame name>.png`` at ``sfm_hw`` (255 = use, 0 = ignore =
    dynamic) from the masks of rule sfm_masks (at its analysis size, or any size of the same
    aspect ratio as the training frames ``hw`` or the SfM images; a mask covers the whole
    frame, so it is resized to the whole SfM image)."""
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
        if not (same_aspect(dynamic.shape, hw) or same_aspect(dynamic.shape, sfm_hw)):
            raise StageError(
                scene,
                STAGE,
                f"mask {masks_dir / p.name} is {dynamic.shape[1]}x{dynamic.shape[0]}, "
                f"a different shape from the frames ({hw[1]}x{hw[0]}) and the SfM images "
                f"({sfm_hw[1]}x{sfm_hw[0]})",
                hint="rerun the sfm_masks rule (delete the scene's sfm_masks folder)",
            )
        io.write_mask(out_dir / f"{p.name}.png", ~resize_mask_conservative(dynamic, sfm_hw))


def _reconstruct(
    images_dir: Path,
    names: list[str],
    mask_dir: Path | None,
    work: Path,
    cfg: SfmConfig,
    sfm_hw: tuple[int, int],
    timings: dict[str, float],
) -> tuple[Any, dict[str, Any]]:
    """Extract, match and map; return the best model (or None) and facts for the summary."""
    import pycolmap

    db = work / "database.db"
    n = len(names)

    t0 = time.perf_counter()
    reader = pycolmap.ImageReaderOptions()
    reader.camera_model = cfg.camera_model
    if mask_dir is not None:
        reader.mask_path = str(mask_dir)
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = schedule_threads(cfg)
    extraction.sift.max_num_features = cfg.max_num_features
    log.info("extracting SIFT features from %d frames (masks: %s)", n, mask_dir is not None)
    pycolmap.extract_features(
        db,
        images_dir,
        image_names=names,
        camera_mode=pycolmap.CameraMode.SINGLE,
        reader_options=reader,
        extraction_options=extraction,
        device=pycolmap.Device.cpu,
    )
    timings["extract"] = time.perf_counter() - t0
    log.info("feature extraction: %.1f s", timings["extract"])

    focal: dict[str, Any] = {"prior_fov_deg": cfg.focal_prior_fov, "prior_px": None}
    if cfg.focal_prior_fov is not None:
        f0 = focal_from_fov(cfg.focal_prior_fov, sfm_hw[1])
        _set_focal_prior(db, f0)
        focal["prior_px"] = f0
        log.info(
            "focal length prior: %.1f px at %d px wide (horizontal field of view %g deg)",
            f0,
            sfm_hw[1],
            cfg.focal_prior_fov,
        )

    t0 = time.perf_counter()
    mode = cfg.matching
    if mode == "auto":
        mode = "exhaustive" if n <= cfg.exhaustive_max_frames else "sequential"
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = cfg.num_threads
    verification = pycolmap.TwoViewGeometryOptions()
    verification.ransac.random_seed = cfg.random_seed
    log.info("%s matching of %d frames", mode, n)
    if mode == "exhaustive":
        pycolmap.match_exhaustive(
            db,
            matching_options=matching,
            verification_options=verification,
            device=pycolmap.Device.cpu,
        )
    else:
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = cfg.sequential_overlap
        pairing.num_threads = cfg.num_threads
        pycolmap.match_sequential(
            db,
            matching_options=matching,
            pairing_options=pairing,
            verification_options=verification,
            device=pycolmap.Device.cpu,
        )
    timings["match"] = time.perf_counter() - t0
    log.info("matching: %.1f s", timings["match"])

    t0 = time.perf_counter()
    fixed = cfg.focal_prior_fov is not None
    best, held, attempts = _map_with_retries(db, images_dir, work / "models", n, cfg, fixed)
    timings["map"] = time.perf_counter() - t0
    shutil.rmtree(work / "models", ignore_errors=True)

    if best is not None:
        # held: the focal length stayed fixed while mapping (a prior, or the held fallback)
        focal["held"] = held
        focal["parallax_deg"] = median_parallax_deg(best)
        focal["refined"] = not held
        focal["error_gain"] = None
        if held and focal["parallax_deg"] >= REFINE_MIN_PARALLAX_DEG:
            t0 = time.perf_counter()
            refined, gain = _refine_focal(best, cfg)
            focal["error_gain"] = gain
            if gain >= REFINE_MIN_ERROR_GAIN:
                best = refined
                focal["refined"] = True
            timings["refine_focal"] = time.perf_counter() - t0
        if held:
            log.info(
                "median parallax %.2f deg (threshold %g), reprojection error gain of a free "
                "focal length %s (threshold %g): focal length %s at %.1f px",
                focal["parallax_deg"],
                REFINE_MIN_PARALLAX_DEG,
                "not tried" if focal["error_gain"] is None else f"{focal['error_gain']:.2%}",
                REFINE_MIN_ERROR_GAIN,
                "refined by bundle adjustment"
                if focal["refined"]
                else f"kept at the {'prior' if fixed else 'initial guess'}",
                _camera(best).mean_focal_length(),
            )
    if best is not None:
        t0 = time.perf_counter()
        focal["sensitivity"] = focal_sensitivity(best, cfg)
        timings["focal_sensitivity"] = time.perf_counter() - t0
        if not fixed and focal["sensitivity"] < FOCAL_MIN_SENSITIVITY:
            t0 = time.perf_counter()
            scanned, focal["scan"] = scan_focal(best, cfg)
            if scanned is not None:
                best = scanned
                focal["refined"] = True
                focal["sensitivity"] = focal_sensitivity(best, cfg)
            timings["focal_scan"] = time.perf_counter() - t0
    last = attempts[-1]["model_sizes"] if attempts else []
    return best, {
        "matching": mode,
        "model_sizes": {str(i): s for i, s in enumerate(last)},
        "num_models": len(last),
        "attempts": attempts,
        "focal": focal,
    }


def _set_focal_prior(db_path: Path, focal_px: float, prior: bool = True) -> None:
    """Start every camera of the database at ``focal_px`` and mark it as a prior (or, with
    ``prior=False``, as a guess again)."""
    import pycolmap

    db = pycolmap.Database.open(db_path)
    try:
        for camera in db.read_all_cameras():
            params = np.array(camera.params)
            params[list(camera.focal_length_idxs())] = focal_px
            camera.params = params
            camera.has_prior_focal_length = prior
            db.update_camera(camera)
    finally:
        db.close()


def _mapping_options(cfg: SfmConfig, relaxed: bool, fixed_focal: bool) -> Any:
    import pycolmap

    opts = pycolmap.IncrementalPipelineOptions()
    opts.num_threads = schedule_threads(cfg)
    opts.mapper.num_threads = schedule_threads(cfg)
    opts.random_seed = cfg.random_seed
    opts.mapper.random_seed = cfg.random_seed
    opts.triangulation.random_seed = cfg.random_seed
    opts.ba_refine_principal_point = False
    if not relaxed:
        opts.max_num_models = cfg.max_models
    if fixed_focal:
        opts.ba_refine_focal_length = False
        opts.mapper.abs_pose_refine_focal_length = False
    if relaxed:
        for key, value in RELAXED_MAPPER.items():
            setattr(opts.mapper, key, value)
        # keep the small models of a split sequence: their frames are registered into the
        # largest one afterwards, and a small model can be the largest of a short clip
        opts.min_model_size = 3
    return opts


def _map_with_retries(
    db: Path, images_dir: Path, work: Path, n: int, cfg: SfmConfig, fixed_focal: bool
) -> tuple[Any, bool, list[dict[str, Any]]]:
    """Map with retries until every frame is registered.

    1. ``default``: the default options (the focal length held only with a prior), at most
       ``cfg.max_models`` models;
    2. without a prior, when the largest model misses frames: ``focal held``, a restart with
       relaxed options and the focal length held at the database camera's initial value
       (COLMAP's guess, 1.2 x the long side); when it misses frames, ``focal held,
       extended``: mapping continued from it with relaxed registration options. A free focal
       length is the usual cause of a short-baseline clip's split: with little parallax
       bundle adjustment lets it drift, and the frames that follow no longer fit the model
       (extending such a model registers them at a wrong focal length: on a panning clip
       whose pure-rotation fit says f = 2000 px, the extended free model had 480 px). The
       caller frees the focal length in a final bundle adjustment behind the parallax and
       error gate, as for a prior;
    3. when frames are still missing: ``default, extended``, the first model continued;
    4. then ``relaxed``, a restart with relaxed options and the focal length as in 1,
       extended the same way.

    Returns the best model (most frames, then most points; None for none), whether its focal
    length was held fixed during mapping, and one record per mapper run: ``{"attempt",
    "model_sizes" (registered frames per model, largest first), "registered", "seconds"}``.
    """
    import pycolmap

    attempts: list[dict[str, Any]] = []
    candidates: list[tuple[Any, bool]] = []

    def run(label: str, relaxed: bool, held: bool, start: Any = None) -> Any:
        t0 = time.perf_counter()
        input_path = ""
        if start is not None:
            input_path = work / f"{len(attempts)}_input"
            input_path.mkdir(parents=True)
            start.write(str(input_path))
        out = work / str(len(attempts))
        out.mkdir(parents=True)
        opts = _mapping_options(cfg, relaxed, held)
        if cfg.random_seed >= 0:
            pycolmap.set_random_seed(cfg.random_seed)  # the same start for every attempt
        models = pycolmap.incremental_mapping(
            db, images_dir, out, options=opts, input_path=input_path
        )
        sizes = sorted((int(r.num_reg_images()) for r in models.values()), reverse=True)
        best = _best_model(list(models.values()))
        attempts.append(
            {
                "attempt": label,
                "model_sizes": sizes,
                "registered": sizes[0] if sizes else 0,
                "seconds": round(time.perf_counter() - t0, 3),
            }
        )
        log.info(
            "mapping (%s): %d model(s) with %s frames, %.1f s",
            label,
            len(sizes),
            sizes or "no",
            attempts[-1]["seconds"],
        )
        if best is not None:
            candidates.append((best, held))
        return best

    def extend(model: Any, label: str, held: bool) -> bool:
        """Continue ``model`` when it misses frames; True when every frame registered."""
        if 2 <= _num_reg(model) < n:
            log.info(
                "%d of %d frames in the largest model: registering the others into it "
                "with relaxed options",
                _num_reg(model),
                n,
            )
            model = run(f"{label}, extended", True, held, start=model)
        return _num_reg(model) == n

    first = run("default", False, fixed_focal)
    done = _num_reg(first) == n
    if not done and not fixed_focal:
        guess = _initial_focal(db)
        log.info(
            "frames are missing: mapping again with the focal length held at %.1f px "
            "(COLMAP's initial guess)",
            guess,
        )
        _set_focal_prior(db, guess)
        try:
            done = extend(run("focal held", True, True), "focal held", True)
        finally:
            _set_focal_prior(db, guess, prior=False)
    if not done:
        done = extend(first, "default", fixed_focal)
    if not done:
        extend(run("relaxed", True, fixed_focal), "relaxed", fixed_focal)
    if not candidates:
        return None, fixed_focal, attempts
    best = _best_model([m for m, _ in candidates])
    held = next(h for m, h in candidates if m is best)
    return best, held, attempts


def _initial_focal(db_path: Path) -> float:
    """The focal length (pixels) of the database's first camera: COLMAP's initial guess
    (1.2 x the long side) when the camera has no prior."""
    import pycolmap

    db = pycolmap.Database.open(db_path)
    try:
        camera = db.read_all_cameras()[0]
        return float(np.mean(np.array(camera.params)[list(camera.focal_length_idxs())]))
    finally:
        db.close()


def schedule_threads(cfg: SfmConfig) -> int:
    """Threads of the steps whose result depends on the threads' schedule: 1 with
    ``cfg.deterministic``, ``cfg.num_threads`` otherwise.

    These are feature extraction (COLMAP numbers the images in the order its threads finish
    them, and the mapper's choices follow the numbering), the incremental mapper and bundle
    adjustment. Matching keeps ``num_threads``: its pairs are independent and the RANSAC of
    its geometric verification is seeded with ``cfg.random_seed`` (measured: 1, 2, 3, 4, 8
    and 16 matching threads gave identical verified matches for every pair of a 12-frame
    clip). Measured on a synthetic smooth-texture clip: two runs with 2 threads gave focal
    lengths 1.6 % apart, deterministic runs the same model (30 of 30 runs beside two busy
    trainings bit-identical; one CI run under load once differed by 0.0036 in the camera
    matrices, from identical matches, inside COLMAP's single-threaded mapper).
    """
    return 1 if cfg.deterministic else cfg.num_threads


def _num_reg(rec: Any) -> int:
    return 0 if rec is None else int(rec.num_reg_images())


def _best_model(models: list[Any]) -> Any:
    """Most registered frames, then most 3D points; None for no model."""
    if not models:
        return None
    return max(models, key=lambda r: (int(r.num_reg_images()), int(r.num_points3D())))


def _camera(rec: Any) -> Any:
    return next(iter(rec.cameras.values()))


def median_parallax_deg(rec: Any) -> float:
    """Median over the model's 3D points of the largest angle (degrees) between the rays from
    the registered cameras that observe the point; 0 for a model without such points."""
    centres = {i: img.projection_center() for i, img in rec.images.items() if img.has_pose}
    angles = []
    for point in rec.points3D.values():
        ids = {el.image_id for el in point.track.elements if el.image_id in centres}
        if len(ids) < 2:
            continue
        rays = point.xyz - np.array([centres[i] for i in ids])
        rays /= np.linalg.norm(rays, axis=1, keepdims=True)
        angles.append(np.degrees(np.arccos(np.clip((rays @ rays.T).min(), -1.0, 1.0))))
    return float(np.median(angles)) if angles else 0.0


def _refine_focal(rec: Any, cfg: SfmConfig) -> tuple[Any, float]:
    """Global bundle adjustment of a copy of ``rec`` with the focal length free.

    Returns the adjusted copy and the relative reduction of the mean reprojection error
    (``1 - after / before``; ``rec`` was adjusted with the focal length fixed).
    """
    import copy

    import pycolmap

    before = float(rec.compute_mean_reprojection_error())
    rec = copy.deepcopy(rec)

    opts = pycolmap.BundleAdjustmentOptions()
    opts.refine_focal_length = True
    opts.refine_principal_point = False
    opts.print_summary = False
    opts.ceres.solver_options.num_threads = schedule_threads(cfg)
    pycolmap.bundle_adjustment(rec, opts)
    after = float(rec.compute_mean_reprojection_error())
    return rec, (1.0 - after / before) if before > 0 else 0.0


def _adjusted_at_focal(rec: Any, cfg: SfmConfig, focal_px: float | None = None, factor=1.0):
    """A copy of ``rec`` with its focal length set to ``focal_px`` (or multiplied by
    ``factor``), held there while poses and points are bundle-adjusted; and its mean
    reprojection error (inf when the adjustment diverges: a non-finite error, or one over
    :data:`DIVERGED_ERROR_PX`, or none at all)."""
    import copy

    import pycolmap

    probe = copy.deepcopy(rec)
    for camera in probe.cameras.values():
        params = np.array(camera.params, dtype=float)
        for i in camera.focal_length_idxs():
            params[i] = focal_px if focal_px is not None else params[i] * factor
        camera.params = params
    opts = pycolmap.BundleAdjustmentOptions()
    opts.refine_focal_length = False
    opts.refine_principal_point = False
    opts.refine_extra_params = False
    opts.print_summary = False
    opts.ceres.solver_options.num_threads = schedule_threads(cfg)
    pycolmap.bundle_adjustment(probe, opts)
    err = float(probe.compute_mean_reprojection_error())
    return probe, err if 0 < err < DIVERGED_ERROR_PX else math.inf


def scan_focal(rec: Any, cfg: SfmConfig) -> tuple[Any | None, dict[str, Any]]:
    """Search the focal length of a model whose error barely depends on it near the estimate.

    The model is bundle-adjusted with the focal length held at each rung of a ladder spanning
    :data:`FOCAL_SCAN_FOV_DEG` (ratio :data:`FOCAL_SCAN_RATIO`); when the best rung lowers the
    mean reprojection error by :data:`FOCAL_SCAN_MIN_GAIN` or more, that model is adjusted once
    more with the focal length free and returned (the held one when the free adjustment
    raises the error or diverges), else None (keep ``rec``). The record lists
    every rung's focal length (px) and error, the best, the gain and whether it was taken.

    Example: 320 px wide frames -> 13 rungs from 92 px (120 deg) to 1,215 px (15 deg). A model
    (8 turning cameras) adjusted at 180 px whose true focal length is 300 px: the 92 px rung
    diverges, the lowest error is at the 270 px rung (3.5 % below the model's), and the free
    adjustment from there ends at 304 px.
    """
    camera = _camera(rec)
    width = int(camera.width)
    base = float(rec.compute_mean_reprojection_error())
    lo, hi = (focal_from_fov(fov, width) for fov in FOCAL_SCAN_FOV_DEG)
    count = int(math.ceil(math.log(hi / lo) / math.log(FOCAL_SCAN_RATIO))) + 1
    rungs = np.geomspace(lo, hi, count)
    errors, best, best_err = [], None, math.inf
    for f in rungs:
        probe, err = _adjusted_at_focal(rec, cfg, focal_px=float(f))
        errors.append(err)
        if err < best_err:
            best, best_err = probe, err
    gain = 1.0 - best_err / base if base > 0 and math.isfinite(best_err) else 0.0
    record = {
        "focal_px": [float(f) for f in rungs],
        "error": [float(e) if math.isfinite(e) else None for e in errors],
        "best_px": float(rungs[int(np.argmin(errors))]),
        "gain": float(gain),
        "taken": bool(gain >= FOCAL_SCAN_MIN_GAIN),
    }
    log.info(
        "the clip barely fixes the focal length near %.1f px: scanned %d focal lengths from "
        "%.0f to %.0f px; lowest error at %.1f px, %.1f %% below the estimate's (threshold "
        "%g %%): %s",
        camera.mean_focal_length(),
        count,
        lo,
        hi,
        record["best_px"],
        100 * gain,
        100 * FOCAL_SCAN_MIN_GAIN,
        "taken" if record["taken"] else "estimate kept",
    )
    if not record["taken"]:
        return None, record
    refined, _ = _refine_focal(best, cfg)
    err = float(refined.compute_mean_reprojection_error())
    # the free adjustment can diverge from a rung where the held one did not (davis_bear: a few
    # points thrown to 1e149 px); then the held rung stays
    record["refined"] = bool(0 < err <= best_err)
    return (refined if record["refined"] else best), record


def focal_sensitivity(rec: Any, cfg: SfmConfig) -> float:
    """How much the clip fixes the focal length: the smaller relative rise of the mean
    reprojection error when the focal length is held at :data:`FOCAL_PROBE_FACTORS` times the
    estimate and poses and points are bundle-adjusted to it (0.05 = 5 % worse).

    A sideways camera that never turns, or few and short feature tracks, leave the error
    nearly flat over a wide range of focal lengths; the estimate is then as good as a guess.
    Rises are capped at 1 (the error doubled), and a probe whose adjustment diverges (a
    non-finite error) counts as 1."""
    base = float(rec.compute_mean_reprojection_error())
    if not base > 0:
        return 1.0
    rises = []
    for factor in FOCAL_PROBE_FACTORS:
        _, err = _adjusted_at_focal(rec, cfg, factor=factor)
        rises.append(min(1.0, err / base - 1.0) if math.isfinite(err) else 1.0)
    return float(min(rises))


def _warn_focal_sensitivity(focal: dict, hfov: float, cfg: SfmConfig, scene: str | None) -> None:
    sensitivity = focal.get("sensitivity")
    if cfg.focal_prior_fov is not None or sensitivity is None:
        return
    if sensitivity >= FOCAL_MIN_SENSITIVITY:
        return
    log.warning(
        "scene %s: this clip barely fixes the focal length: holding it 20 %% off changes the "
        "reprojection error by only %.2f %% (a camera that moves without turning, or few "
        "features), so the field of view of %.1f deg may be off by 10-20 %%; give the lens's "
        "horizontal field of view as sfm.focal_prior_fov if you know it",
        scene,
        100 * sensitivity,
        hfov,
    )


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
    camera = _camera(rec)
    K = training_intrinsics(
        (camera.focal_length_x, camera.focal_length_y),
        (camera.principal_point_x, camera.principal_point_y),
        (camera.height, camera.width),
        hw,
    )

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

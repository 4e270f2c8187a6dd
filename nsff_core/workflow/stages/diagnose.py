"""Checks of a scene's priors before training, with images to look at (rule ``diagnose``).

:func:`diagnose_scene` reads the priors of one scene (frames, forward flow and its
consistency masks, motion masks, ``cameras.npz``, the COLMAP model, disparity maps), measures
what commonly goes wrong on real video, and writes into ``out_dir``:

- ``diagnostics.json``: every check with its measured value, threshold and outcome, the
  per-frame measurements, and ``failed``: the short names of the failed checks;
- ``contact_sheet.png``: evenly spaced frames, one per row: the frame with its motion mask
  (red tint, yellow outline), the forward flow in colour (hue = direction, saturation =
  magnitude, white = still; the HSV wheel of Baker et al.'s Middlebury images, built with
  OpenCV), the disparity map (inferno: bright = near);
- ``per_frame.png``: mask coverage and the flow-consistent share per frame, with thresholds;
- ``camera_path.png``: the camera centres and viewing directions over the SfM points, from
  above and from the side, in the axes of the mean camera;
- ``depth_vs_sfm.png``: per frame, the rank correlation of the disparity map with the SfM
  points; and the points of the worst frame.

Checks (short names as in ``summary.csv``'s ``warnings`` column; bounds in
:class:`~nsff_core.config.DiagnosticsConfig`):

- ``fov``: horizontal field of view ``2 atan(W / 2 fx)`` outside [min_fov, max_fov] degrees;
- ``focal``: the SfM focal length's sensitivity (``sfm/summary.json``: the rise of the
  reprojection error when it is held 20 % off) below min_focal_sensitivity: the clip does not
  fix the focal length (not checked when sfm.focal_prior_fov gave it);
- ``registered``: share of frames with an SfM pose of their own below min_registered_fraction;
- ``masks_large`` / ``masks_small``: dynamic share above max_mask_coverage / below
  min_mask_coverage on most frames (more than half);
- ``flow_consistency``: mean forward-backward consistent share of the flow below
  min_flow_consistent;
- ``mover_motion``: the movers' own motion between neighbouring frames above max_mover_motion
  (a fraction of the frame width): per frame with a mask of at least
  :data:`MIN_MOVER_SHARE` of the frame, the 95th percentile inside the mask of the forward
  flow minus the median flow outside it (the camera's share, roughly), then the median over
  those frames. A mover that moves or changes shape that much between the frames kept is
  blurred in training views and in held-out frames; frames closer in time help;
- ``depth_sfm``: mean over frames of the Spearman rank correlation between the disparity map
  (at the nearest pixel) and ``1 / z`` of the static SfM points the frame sees, below
  min_depth_spearman. Rank correlation because the maps are known up to scale and shift per
  frame. With ``depth.backend: sparse`` the maps are built from these same points, so the
  check mostly catches broken densification; it measures a pretrained backend for real.

A failed check is a warning in the log; under ``cfg.strict`` it raises a
:class:`~nsff_core.errors.StageError` naming the check, the measured value and what to try,
after the images are written and before ``diagnostics.json`` is (whose absence marks an
incomplete run; an old one is deleted first).

pycolmap is imported only after the contact sheet and the per-frame plot are written: pycolmap
4.2.1 exports its own zlib symbols, and a PNG written after importing it aborts the process
when pycolmap is loaded before numpy (see :mod:`nsff_core.priors.sfm`). numpy is always loaded
first here, and then PNGs written by OpenCV and matplotlib after the import were seen to work;
the two figures that need the SfM points are drawn last all the same.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nsff_core.config import DiagnosticsConfig
from nsff_core.errors import StageError
from nsff_core.model import cameras as cam
from nsff_core.model import io

log = logging.getLogger(__name__)

STAGE = "diagnose"
#: the file names written into ``out_dir`` (the rule declares the same)
JSON_NAME = "diagnostics.json"
IMAGE_NAMES = {
    "contact_sheet": "contact_sheet.png",
    "per_frame": "per_frame.png",
    "camera_path": "camera_path.png",
    "depth_vs_sfm": "depth_vs_sfm.png",
}
#: the checks, in the order they are reported
CHECK_NAMES = (
    "fov",
    "focal",
    "registered",
    "masks_large",
    "masks_small",
    "flow_consistency",
    "mover_motion",
    "depth_sfm",
)
#: a mask check fails when more than this share of the frames is out of range ("most frames")
MOST_FRAMES = 0.5
#: frames whose mask covers less than this share of the frame are left out of mover_motion
MIN_MOVER_SHARE = 0.002
#: frames that see fewer static SfM points than this get no rank correlation
MIN_POINTS_PER_FRAME = 10
#: SfM points seen by fewer frames are left out of the depth check (as the depth rule does)
MIN_TRACK_LENGTH = 3
#: long side of a contact-sheet tile in pixels (larger frames are shrunk), gap between tiles
TILE_MAX = 480
TILE_GAP = 4
#: the contact sheet's background (grey level) and the mask overlay
_SHEET_BG = 32
_MASK_RGB = (255, 40, 40)
_MASK_ALPHA = 0.45
_OUTLINE_RGB = (255, 230, 0)
#: size of the matplotlib figures in inches, and their resolution
_FIG_DPI = 100
#: points drawn in the camera-path plot at most (a random subset of a large model), and
#: viewing-direction arrows per view at most (every k-th camera)
_MAX_PLOT_POINTS = 20000
_MAX_ARROWS = 30


@dataclass
class Check:
    """One check: the measured ``value``, its ``threshold`` and whether it ``passed``
    (None: not measured, e.g. no mask to judge)."""

    name: str
    value: float | None
    unit: str
    threshold: dict[str, float]
    passed: bool | None
    message: str
    hint: str
    extra: dict[str, Any] = field(default_factory=dict)


def diagnose_scene(
    frames_dir: str | os.PathLike,
    flow_fw_dir: str | os.PathLike,
    flow_ok_dir: str | os.PathLike,
    masks_dir: str | os.PathLike,
    disp_dir: str | os.PathLike,
    cameras_path: str | os.PathLike,
    sfm_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: DiagnosticsConfig = DiagnosticsConfig(),  # noqa: B008 (frozen dataclass)
    scene: str | None = None,
    masks_backend: str | None = None,
) -> dict[str, Any]:
    """Check the priors of one scene and write ``diagnostics.json`` and the images.

    Args:
        frames_dir: ``00000.png ...`` RGB frames at training resolution (names as in
            ``cameras.npz``).
        flow_fw_dir: ``{i:05d}.flo`` flow from frame i to i+1 (pixels).
        flow_ok_dir: ``{i:05d}_fw.png`` / ``{i:05d}_bw.png`` consistency masks (255 = ok).
        masks_dir: same-named motion masks (255 = dynamic).
        disp_dir: ``{i:05d}.npy`` disparity maps (H, W).
        cameras_path: ``cameras.npz`` (K, hw, c2w, names, registered).
        sfm_dir: the sfm rule's folder (COLMAP model in ``sparse/0``, ``summary.json``).
        out_dir: where the outputs go (created).
        cfg: thresholds and ``strict``.
        scene: scene name for messages.
        masks_backend: the scene's ``masks.backend``; ``none`` skips the mask checks.

    Returns:
        The dict written to ``diagnostics.json``.

    Raises:
        StageError: an input is missing or inconsistent; or, under ``cfg.strict``, a check
            failed (the images are written, ``diagnostics.json`` is not).
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # a failed run must not leave the verdict of an earlier run beside its images
    (out_dir / JSON_NAME).unlink(missing_ok=True)
    if cfg.min_fov > cfg.max_fov:
        raise StageError(
            scene,
            STAGE,
            f"diagnostics.min_fov ({cfg.min_fov}) is above diagnostics.max_fov ({cfg.max_fov})",
            hint="give diagnostics.min_fov <= diagnostics.max_fov",
        )
    frames_dir, masks_dir, disp_dir = Path(frames_dir), Path(masks_dir), Path(disp_dir)
    cams = io.read_cameras(cameras_path)
    names = [str(x) for x in cams["names"]]
    n = len(names)
    h, w = (int(v) for v in cams["hw"])
    _require_files(scene, frames_dir, names, "frames")
    _require_files(scene, masks_dir, names, "masks")
    _require_files(scene, disp_dir, [io.frame_name(i, ".npy") for i in range(n)], "depth")

    # one mask and flow in memory at a time (a long clip at source size would need GBs); the
    # last frame has no forward flow
    coverage, motion = np.zeros(n), np.full(n, math.nan)
    for i, nm in enumerate(names):
        mask = _read_mask(masks_dir / nm, (h, w), scene)
        coverage[i] = float(mask.mean())
        if i < n - 1:
            motion[i] = mover_motion(
                io.read_flo(Path(flow_fw_dir) / io.frame_name(i, ".flo")), mask
            )
    ok_fw, ok_bw = _flow_ok_fractions(Path(flow_ok_dir), n)

    checks = {
        "fov": _check_fov(cams, cfg),
        "focal": _check_focal(Path(sfm_dir), cfg),
        "registered": _check_registered(cams, cfg),
        **_check_masks(coverage, cfg, masks_backend),
        "flow_consistency": _check_flow(ok_fw, ok_bw, cfg),
        "mover_motion": _check_mover_motion(motion, w, cfg, masks_backend),
    }

    images = {k: out_dir / v for k, v in IMAGE_NAMES.items()}
    shown = contact_sheet_indices(n, cfg.contact_sheet_frames)  # frames with a forward flow
    sheet = contact_sheet(
        [io.read_image(frames_dir / names[i], made_by="frames") for i in shown],
        [_read_mask(masks_dir / names[i], (h, w), scene) for i in shown],
        [io.read_flo(Path(flow_fw_dir) / io.frame_name(i, ".flo")) for i in shown],
        [io.read_disparity(disp_dir / io.frame_name(i, ".npy")) for i in shown],
        [names[i] for i in shown],
    )
    with io.atomic_file(images["contact_sheet"]) as tmp:
        io.write_image(tmp, sheet)
    plot_per_frame(images["per_frame"], coverage, ok_fw, ok_bw, cfg, scene)

    # pycolmap from here on (see the module docstring)
    per_frame_points = _static_points(Path(sfm_dir), cams, masks_dir, scene)
    rho, counts = depth_correlations(
        (io.read_disparity(disp_dir / io.frame_name(i, ".npy")) for i in range(n)),
        per_frame_points,
    )
    checks["depth_sfm"] = _check_depth(rho, cfg)
    xyz = _model_points(Path(sfm_dir))
    plot_camera_path(images["camera_path"], cams, xyz, scene, checks["fov"].value)
    worst = int(np.nanargmin(rho)) if np.isfinite(rho).any() else None
    plot_depth(
        images["depth_vs_sfm"],
        rho,
        cfg.min_depth_spearman,
        None if worst is None else (names[worst], *_sampled(disp_dir, worst, per_frame_points)),
        scene,
    )

    failed = [k for k in CHECK_NAMES if checks[k].passed is False]
    for k in CHECK_NAMES:
        c = checks[k]
        if c.passed is False:
            log.warning("check %s failed: %s. Try: %s", k, c.message, c.hint)
        else:
            log.info("check %s %s: %s", k, "passed" if c.passed else "not measured", c.message)
    if failed and cfg.strict:
        raise StageError(
            scene,
            STAGE,
            f"{len(failed)} check(s) of the priors failed: "
            + "; ".join(f"{k}: {checks[k].message}" for k in failed),
            hint=" ".join(f"[{k}] {checks[k].hint}." for k in failed)
            + f" The images of the checks are in {out_dir} (Snakemake deletes a failed job's "
            "outputs: add --keep-incomplete to keep them); diagnostics.strict: false trains "
            "anyway, with these warnings in summary.csv.",
        )

    result = {
        "scene": scene,
        "strict": cfg.strict,
        "failed": failed,
        "checks": {k: _check_json(checks[k]) for k in CHECK_NAMES},
        "frames": n,
        "size": [w, h],
        "per_frame": {
            "names": names,
            "mask_coverage": coverage.tolist(),
            "flow_ok_fw": ok_fw.tolist(),
            "flow_ok_bw": ok_bw.tolist(),
            "mover_motion_px": motion.tolist(),
            "depth_spearman": rho.tolist(),
            "static_sfm_points": counts.tolist(),
        },
        "contact_sheet_frames": [names[i] for i in shown],
        "sfm": _sfm_summary(Path(sfm_dir)),
        "images": {k: v.name for k, v in images.items()},
        "time_s": round(time.perf_counter() - t0, 3),
    }
    with io.atomic_file(out_dir / JSON_NAME) as tmp:
        tmp.write_text(json.dumps(_finite_or_null(result), indent=2))
    log.info(
        "diagnostics of %d frames in %.1f s: %s",
        n,
        result["time_s"],
        f"failed {', '.join(failed)}" if failed else "every check passed",
    )
    return result


# --------------------------------------------------------------------------- checks


def horizontal_fov_deg(K: np.ndarray, width: int) -> float:
    """Horizontal field of view in degrees of a pinhole camera ``K`` (3, 3) ``width`` px
    wide: ``2 atan(width / (2 fx))``."""
    return float(np.degrees(2.0 * np.arctan(0.5 * width / float(K[0, 0]))))


def _check_fov(cams: dict[str, np.ndarray], cfg: DiagnosticsConfig) -> Check:
    w = int(cams["hw"][1])
    fx = float(cams["K"][0, 0])
    fov = horizontal_fov_deg(cams["K"], w)
    return Check(
        "fov",
        fov,
        "degrees",
        {"min": cfg.min_fov, "max": cfg.max_fov},
        cfg.min_fov <= fov <= cfg.max_fov,
        f"horizontal field of view {fov:.1f} deg (f = {fx:.1f} px at {w} px wide; "
        f"expected {cfg.min_fov:g}-{cfg.max_fov:g} deg)",
        "set sfm.focal_prior_fov to the camera's horizontal field of view in degrees (about "
        "65-75 for a phone's main camera, 90-120 for an action camera); a clip with little "
        "camera motion gives SfM little to fit the focal length with, so also try a larger "
        "frames stride",
    )


def _check_focal(sfm_dir: Path, cfg: DiagnosticsConfig) -> Check:
    """The focal length's sensitivity recorded by the sfm rule (None when not measured: an
    older SfM output, or a focal length given as sfm.focal_prior_fov)."""
    summary_path = sfm_dir / "summary.json"
    focal = {}
    if summary_path.is_file():
        focal = json.loads(summary_path.read_text()).get("focal") or {}
    value = focal.get("sensitivity")
    given = focal.get("prior_fov_deg") is not None
    measured = value is not None and not given
    fixed = measured and value >= cfg.min_focal_sensitivity
    return Check(
        "focal",
        value,
        "fraction",
        {"min": cfg.min_focal_sensitivity},
        bool(fixed) if measured else None,
        "focal length given as sfm.focal_prior_fov"
        if given
        else "focal length's sensitivity not measured"
        if value is None
        else f"holding the focal length 20 % off raises the reprojection error by "
        f"{100 * value:.2f} % (expected >= {100 * cfg.min_focal_sensitivity:g} %): the clip "
        + ("fixes the focal length" if fixed else "does not fix the focal length"),
        "give the lens's horizontal field of view as sfm.focal_prior_fov (a camera that "
        "translates without turning, or a scene with few features, leaves the focal length "
        "to a guess)",
    )


def _check_registered(cams: dict[str, np.ndarray], cfg: DiagnosticsConfig) -> Check:
    reg = np.asarray(cams["registered"], bool)
    frac = float(reg.mean())
    missing = [str(x) for x, r in zip(cams["names"], reg, strict=True) if not r]
    listed = ", ".join(missing[:10]) + (
        f" ... ({len(missing) - 10} more)" if len(missing) > 10 else ""
    )
    msg = f"{int(reg.sum())} of {len(reg)} frames registered ({100 * frac:.0f} %)"
    if missing:
        msg += f"; poses interpolated for {listed}"
    return Check(
        "registered",
        frac,
        "fraction",
        {"min": cfg.min_registered_fraction},
        frac >= cfg.min_registered_fraction,
        msg,
        "the unregistered frames need more texture or camera motion: check that the motion "
        "masks do not cover the static background there (contact_sheet.png), take every k-th "
        "frame (frames stride), or cut those frames (frames start/end)",
        {"unregistered": missing},
    )


def _check_masks(
    coverage: np.ndarray, cfg: DiagnosticsConfig, backend: str | None
) -> dict[str, Check]:
    n = len(coverage)
    median = float(np.median(coverage))
    high = float(np.mean(coverage > cfg.max_mask_coverage))
    low = float(np.mean(coverage < cfg.min_mask_coverage))
    off = backend == "none"
    skip = " (not checked: masks.backend is none)" if off else ""
    large = Check(
        "masks_large",
        high,
        "fraction of frames",
        {"max_coverage": cfg.max_mask_coverage, "max_fraction_of_frames": MOST_FRAMES},
        None if off else high <= MOST_FRAMES,
        f"motion masks cover more than {100 * cfg.max_mask_coverage:g} % of the frame on "
        f"{round(high * n)} of {n} frames (median {100 * median:.1f} %){skip}",
        "the masks mark static parts dynamic (see contact_sheet.png): try another masks "
        "backend (masks.backend), or raise the masks' thresholds; if the movers really fill "
        "most of the frame, raise diagnostics.max_mask_coverage",
        {"median_coverage": median},
    )
    small = Check(
        "masks_small",
        low,
        "fraction of frames",
        {"min_coverage": cfg.min_mask_coverage, "max_fraction_of_frames": MOST_FRAMES},
        None if off else low <= MOST_FRAMES,
        f"motion masks cover less than {100 * cfg.min_mask_coverage:g} % of the frame on "
        f"{round(low * n)} of {n} frames (median {100 * median:.1f} %){skip}",
        "the masks miss the movers (see contact_sheet.png): try another masks backend "
        "(masks.backend, e.g. a semantic one for people and animals); if the scene has no "
        "movers, set diagnostics.min_mask_coverage: 0",
        {"median_coverage": median},
    )
    return {"masks_large": large, "masks_small": small}


def _check_flow(ok_fw: np.ndarray, ok_bw: np.ndarray, cfg: DiagnosticsConfig) -> Check:
    values = np.concatenate([ok_fw, ok_bw])
    values = values[np.isfinite(values)]
    frac = float(values.mean()) if values.size else math.nan
    return Check(
        "flow_consistency",
        frac,
        "fraction of pixels",
        {"min": cfg.min_flow_consistent},
        bool(frac >= cfg.min_flow_consistent) if values.size else None,
        f"{100 * frac:.1f} % of the flow passes the forward-backward test (minimum "
        f"{100 * cfg.min_flow_consistent:g} %)",
        "the motion between neighbouring frames is too large or too blurred for the flow: "
        "take frames closer in time (smaller frames stride), a larger training size "
        "(frames width), or flow.backend: raft",
    )


def mover_motion(flow: np.ndarray, mask: np.ndarray) -> float:
    """The movers' own motion in one frame (px): the 95th percentile inside ``mask`` (H, W)
    bool of ``|flow - m|``, ``m`` the median flow outside it; NaN when the mask covers less
    than :data:`MIN_MOVER_SHARE` of the frame or nearly all of it.

    Example: a mask over a region that moves 10 px right while the rest moves 2 px right
    gives 8.0.
    """
    if flow.shape[:2] != mask.shape:
        raise ValueError(f"flow {flow.shape[:2]} and mask {mask.shape} differ in size")
    share = float(mask.mean())
    if share < MIN_MOVER_SHARE or share > 1.0 - MIN_MOVER_SHARE:
        return math.nan
    background = np.median(flow[~mask], axis=0)
    return float(np.percentile(np.linalg.norm(flow[mask] - background, axis=-1), 95))


def _check_mover_motion(
    motion: np.ndarray, width: int, cfg: DiagnosticsConfig, backend: str | None
) -> Check:
    have = motion[np.isfinite(motion)]
    px = float(np.median(have)) if have.size else math.nan
    frac = px / width
    measured = have.size > 0 and backend != "none"
    return Check(
        "mover_motion",
        frac if measured else None,
        "fraction of the frame width",
        {"max": cfg.max_mover_motion},
        bool(frac <= cfg.max_mover_motion) if measured else None,
        (
            f"movers move {px:.1f} px between neighbouring frames, {100 * frac:.1f} % of the "
            f"frame width (median over {have.size} frames with movers of the 95th percentile "
            f"inside the masks; maximum {100 * cfg.max_mover_motion:g} %)"
            if measured
            else "not measured: no frame has a motion mask"
        ),
        "fast movers change more between the frames kept than training can follow, so they "
        "come out blurred: take frames closer in time (a smaller frames stride, or the same "
        "number of frames over a shorter span of the video); raise "
        "diagnostics.max_mover_motion to accept it",
        {"median_px": px, "max_px": float(have.max()) if have.size else math.nan},
    )


def _check_depth(rho: np.ndarray, cfg: DiagnosticsConfig) -> Check:
    have = rho[np.isfinite(rho)]
    mean = float(have.mean()) if have.size else math.nan
    return Check(
        "depth_sfm",
        mean,
        "Spearman rho",
        {"min": cfg.min_depth_spearman},
        bool(mean >= cfg.min_depth_spearman) if have.size else None,
        f"disparity maps vs. the static SfM points: mean Spearman {mean:.3f} over "
        f"{have.size} of {len(rho)} frames (worst "
        f"{float(have.min()) if have.size else math.nan:.3f}; minimum "
        f"{cfg.min_depth_spearman:g})",
        "the disparity maps disagree with the SfM geometry (see depth_vs_sfm.png): with "
        "depth.backend: dpt try dpt_model or the sparse backend; with the sparse backend "
        "check the masks (movers left in the static points) and depth.outlier_ratio",
    )


def _check_json(c: Check) -> dict[str, Any]:
    d = asdict(c)
    d.update(d.pop("extra"))
    return d


# --------------------------------------------------------------------------- measurements


def _require_files(scene: str | None, folder: Path, files: list[str], rule: str) -> None:
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise StageError(
            scene,
            STAGE,
            f"{len(missing)} file(s) of the {len(files)} frames are missing in {folder}: "
            f"{', '.join(missing[:10])}",
            hint=f"delete {folder} and rerun: rule '{rule}' writes it again",
        )


def _flow_ok_fractions(flow_ok_dir: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per frame (n,), the consistent share of its forward flow (NaN for the last frame) and
    of its backward flow (NaN for the first)."""
    fw, bw = np.full(n, np.nan), np.full(n, np.nan)
    for i in range(n - 1):
        fw[i] = io.read_mask(flow_ok_dir / f"{i:05d}_fw.png", made_by="flow").mean()
        bw[i + 1] = io.read_mask(flow_ok_dir / f"{i + 1:05d}_bw.png", made_by="flow").mean()
    return fw, bw


def _read_mask(path: Path, hw: tuple[int, int], scene: str | None) -> np.ndarray:
    """A motion mask (H, W) bool, checked to be of the frames' size ``hw``."""
    mask = io.read_mask(path)
    if mask.shape != tuple(hw):
        raise StageError(
            scene,
            STAGE,
            f"mask {path} is {mask.shape[1]}x{mask.shape[0]}, the frames are {hw[1]}x{hw[0]}",
            hint=f"delete {path.parent} and rerun: rule 'masks' writes it again",
        )
    return mask


def _static_points(
    sfm_dir: Path, cams: dict[str, np.ndarray], masks_dir: Path, scene: str | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per frame, the pixels (M, 2) int (col, row) and disparities (M,) of the SfM points
    it sees on static pixels (see :func:`nsff_core.priors.depth.sparse_points`)."""
    from nsff_core.priors.depth import sparse_points

    if not (sfm_dir / "sparse" / "0" / "points3D.bin").is_file():
        raise StageError(
            scene,
            STAGE,
            f"no COLMAP model in {sfm_dir / 'sparse' / '0'}",
            hint=f"delete {sfm_dir} and rerun: rule 'sfm' writes it again",
        )
    h, w = (int(v) for v in cams["hw"])
    out = []
    for (xy, disp), name in zip(
        sparse_points(sfm_dir, cams, MIN_TRACK_LENGTH, scene), cams["names"], strict=True
    ):
        dynamic = _read_mask(masks_dir / str(name), (h, w), scene)
        px = np.rint(xy).astype(np.int64).reshape(-1, 2)
        keep = (px[:, 0] >= 0) & (px[:, 0] < w) & (px[:, 1] >= 0) & (px[:, 1] < h)
        px, disp = px[keep], disp[keep]
        keep = ~dynamic[px[:, 1], px[:, 0]]
        out.append((px[keep], disp[keep]))
    return out


def depth_correlations(
    disparities: Iterable[np.ndarray], points: list[tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """Per frame, the Spearman rank correlation between a disparity map (H, W) at the points'
    pixels and the points' disparities; and the number of points.

    Args:
        disparities: per frame, the map (H, W) (an iterator: one map in memory at a time).
        points: per frame, ``(px, disp)``: integer pixels (M, 2) as (col, row) inside the map,
            and disparities (M,).

    Returns:
        rho (N,) (NaN for a frame with fewer than :data:`MIN_POINTS_PER_FRAME` points; 0 when
        either side is constant: no depth order to agree with), counts (N,) int.
    """
    from scipy.stats import spearmanr

    rho = np.full(len(points), np.nan)
    counts = np.zeros(len(points), np.int64)
    for i, (d_map, (px, disp)) in enumerate(zip(disparities, points, strict=True)):
        counts[i] = len(disp)
        if len(disp) < MIN_POINTS_PER_FRAME:
            continue
        sampled = d_map[px[:, 1], px[:, 0]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant input: NaN, handled below
            r = spearmanr(sampled, disp).statistic
        rho[i] = float(r) if np.isfinite(r) else 0.0
    return rho, counts


def _sampled(
    disp_dir: Path, i: int, points: list[tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """(SfM disparities, map disparities at their pixels) of frame ``i``."""
    px, disp = points[i]
    d_map = io.read_disparity(disp_dir / io.frame_name(i, ".npy"))
    return disp, d_map[px[:, 1], px[:, 0]]


def _model_points(sfm_dir: Path) -> np.ndarray:
    """World positions (P, 3) of the COLMAP model's points."""
    import pycolmap

    rec = pycolmap.Reconstruction(str(sfm_dir / "sparse" / "0"))
    return np.array([p.xyz for p in rec.points3D.values()], np.float64).reshape(-1, 3)


def _sfm_summary(sfm_dir: Path) -> dict[str, Any]:
    """A few numbers of the sfm rule's ``summary.json`` (empty when it is unreadable)."""
    try:
        s = json.loads((sfm_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    keys = ("focal_px", "mean_reprojection_error_px", "num_points3D", "num_models")
    return {k: s[k] for k in keys if k in s}


def _finite_or_null(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_or_null(v) for v in obj]
    return obj


# --------------------------------------------------------------------------- contact sheet


def contact_sheet_indices(n: int, count: int) -> list[int]:
    """Up to ``count`` evenly spaced indices of the ``n - 1`` frames that have a forward flow
    (all but the last), the first and the second-to-last included."""
    return sorted({int(round(x)) for x in np.linspace(0, n - 2, min(count, n - 1))})


def tile_size(hw: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a contact-sheet tile for frames of size ``hw``: the frame shrunk so
    that its long side is at most :data:`TILE_MAX` pixels."""
    h, w = hw
    s = min(1.0, TILE_MAX / max(h, w))
    return max(1, round(h * s)), max(1, round(w * s))


def flow_to_rgb(flow: np.ndarray, max_magnitude: float | None = None) -> tuple[np.ndarray, float]:
    """Colour image (H, W, 3) uint8 of a flow field (H, W, 2) in pixels: hue = direction,
    saturation = magnitude / ``max_magnitude`` (default: the 99th percentile), white = no
    motion. Returns the image and the magnitude that gets full saturation."""
    import cv2

    mag, ang = cv2.cartToPolar(flow[..., 0].astype(np.float32), flow[..., 1].astype(np.float32))
    if max_magnitude is None:
        max_magnitude = float(np.percentile(mag, 99))
    max_magnitude = max(max_magnitude, 1e-6)
    hsv = np.empty((*flow.shape[:2], 3), np.uint8)
    hsv[..., 0] = (ang * (90.0 / np.pi)).astype(np.uint8) % 180  # OpenCV hue: 0..179
    hsv[..., 1] = np.clip(255.0 * mag / max_magnitude, 0, 255).astype(np.uint8)
    hsv[..., 2] = 255
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), max_magnitude


def disparity_to_rgb(disp: np.ndarray) -> np.ndarray:
    """Colour image (H, W, 3) uint8 of a disparity map: inferno over its 1st-99th percentile
    (bright = near)."""
    import cv2

    lo, hi = np.percentile(disp, [1, 99])
    norm = np.clip((disp - lo) / max(hi - lo, 1e-12), 0, 1)
    bgr = cv2.applyColorMap((255 * norm).astype(np.uint8), cv2.COLORMAP_INFERNO)
    return np.ascontiguousarray(bgr[..., ::-1])


def overlay_mask(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The frame (H, W, 3) uint8 with the mask (H, W) bool tinted red and outlined."""
    import cv2

    out = rgb.astype(np.float32)
    tint = np.array(_MASK_RGB, np.float32)
    out[mask] = (1 - _MASK_ALPHA) * out[mask] + _MASK_ALPHA * tint
    out = np.ascontiguousarray(out.astype(np.uint8))
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, _OUTLINE_RGB, 1)
    return out


def _label(img: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in the top-left corner of ``img`` on a dark box."""
    import cv2

    scale = 0.35 if img.shape[1] < 300 else 0.45
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(img, (0, 0), (tw + 6, th + base + 6), (0, 0, 0), -1)
    cv2.putText(
        img, text, (3, th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA
    )
    return img


def contact_sheet(
    frames: list[np.ndarray],
    masks: list[np.ndarray],
    flows: list[np.ndarray],
    disparities: list[np.ndarray],
    names: list[str],
) -> np.ndarray:
    """One row per frame: the frame with its mask, the flow in colour, the disparity map.

    Args:
        frames: RGB (H, W, 3) uint8. masks: (H, W) bool. flows: (H, W, 2) pixels.
        disparities: (H, W). names: frame names for the labels.

    Returns:
        RGB (R th + (R - 1) g, 3 tw + 2 g, 3) uint8 for R rows, tiles of :func:`tile_size`
        and gaps g = :data:`TILE_GAP`.
    """
    import cv2

    th, tw = tile_size(frames[0].shape[:2])
    rows = len(frames)
    sheet = np.full(
        (rows * th + (rows - 1) * TILE_GAP, 3 * tw + 2 * TILE_GAP, 3), _SHEET_BG, np.uint8
    )
    for r, (img, mask, flow, disp, name) in enumerate(
        zip(frames, masks, flows, disparities, names, strict=True)
    ):
        flow_rgb, scale = flow_to_rgb(flow)
        tiles = [
            (overlay_mask(img, mask), f"{Path(name).stem}  mask {100 * mask.mean():.1f}%"),
            (flow_rgb, f"flow to next: full colour {scale:.1f} px"),
            (disparity_to_rgb(disp), "disparity (bright = near)"),
        ]
        y = r * (th + TILE_GAP)
        for c, (tile, text) in enumerate(tiles):
            tile = cv2.resize(tile, (tw, th), interpolation=cv2.INTER_AREA)
            x = c * (tw + TILE_GAP)
            sheet[y : y + th, x : x + tw] = _label(np.ascontiguousarray(tile), text)
    return sheet


# --------------------------------------------------------------------------- plots


def _save(fig: Any, path: Path) -> None:
    with io.atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=_FIG_DPI)


def _figure(width_in: float, height_in: float) -> Any:
    """A matplotlib figure on the Agg canvas (no pyplot: no global state, no GUI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=_FIG_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_per_frame(
    path: Path,
    coverage: np.ndarray,
    ok_fw: np.ndarray,
    ok_bw: np.ndarray,
    cfg: DiagnosticsConfig,
    scene: str | None,
) -> None:
    """Mask coverage and the flow-consistent share per frame, in percent, with thresholds."""
    fig = _figure(8, 5.5)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    t = np.arange(len(coverage))
    ax1.plot(t, 100 * coverage, "o-", ms=3, color="tab:red", label="dynamic (mask)")
    ax1.axhline(100 * cfg.max_mask_coverage, ls="--", color="0.4", lw=1, label="thresholds")
    ax1.axhline(100 * cfg.min_mask_coverage, ls="--", color="0.4", lw=1)
    # linear below 0.1 %, logarithmic above: both thresholds (0.5 % and 40 %) and empty masks
    # stay visible
    ax1.set_yscale("symlog", linthresh=0.1, linscale=0.5)
    ax1.set_ylim(0, 100)
    ax1.set_ylabel("mask coverage (%)")
    ax1.set_title(f"{scene or ''} per frame: motion masks and flow consistency")
    ax1.legend(loc="upper right", fontsize=8)
    ax2.plot(t, 100 * ok_fw, "o-", ms=3, color="tab:blue", label="forward (i to i+1)")
    ax2.plot(t, 100 * ok_bw, "s-", ms=3, color="tab:orange", label="backward (i to i-1)")
    ax2.axhline(100 * cfg.min_flow_consistent, ls="--", color="0.4", lw=1, label="threshold")
    ax2.set_ylim(0, 102)
    ax2.set_ylabel("consistent flow (%)")
    ax2.set_xlabel("frame")
    ax2.legend(loc="lower right", fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    _save(fig, path)


def _mean_camera_axes(c2w: np.ndarray) -> np.ndarray:
    """Rotation (3, 3) whose columns are the mean camera's right, down and forward axes."""
    return cam.project_to_rotation(c2w[:, :3, :3].sum(axis=0))


def _draw_cameras(
    ax: Any,
    centres: np.ndarray,
    forward: np.ndarray,
    reg: np.ndarray,
    axes: tuple[int, int, float],
    arrow: float,
) -> Any:
    """Camera centres (coloured by frame; interpolated poses marked x), their path and their
    viewing directions (at most :data:`_MAX_ARROWS`, evenly spaced) on ``ax``, in the plane of
    coordinates ``axes = (a, b, sign of b)``. Returns the scatter (for a colour bar)."""
    a, b, sb = axes
    t = np.arange(len(centres))
    ax.plot(centres[:, a], sb * centres[:, b], "-", color="0.3", lw=0.8)
    sc = ax.scatter(
        centres[reg, a],
        sb * centres[reg, b],
        c=t[reg],
        cmap="viridis",
        s=18,
        zorder=3,
        vmin=0,
        vmax=max(len(t) - 1, 1),
        label="cameras (colour: frame)",
    )
    if (~reg).any():
        ax.scatter(
            centres[~reg, a],
            sb * centres[~reg, b],
            marker="x",
            c="tab:red",
            s=30,
            zorder=4,
            label="interpolated pose",
        )
    k = slice(None, None, max(1, math.ceil(len(centres) / _MAX_ARROWS)))
    ax.quiver(
        centres[k, a],
        sb * centres[k, b],
        arrow * forward[k, a],
        arrow * sb * forward[k, b],
        angles="xy",
        scale_units="xy",
        scale=1,
        width=0.004,
        color="tab:blue",
        alpha=0.7,
    )
    return sc


def _limits(values: np.ndarray, pad: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Per-column bounds of ``values`` (M, 3), widened by ``pad`` x the largest extent."""
    lo, hi = values.min(axis=0), values.max(axis=0)
    margin = pad * max(float((hi - lo).max()), 1e-9)
    return lo - margin, hi + margin


def plot_camera_path(
    path: Path,
    cams: dict[str, np.ndarray],
    xyz: np.ndarray,
    scene: str | None,
    fov: float | None,
) -> None:
    """Three views in the axes of the mean camera (centred on the mean camera centre): the
    cameras and the SfM points from above (right vs. forward) and from the side (forward vs.
    up), and the cameras alone from above, zoomed to their path (a hand-held path is a dot
    beside the scene). Cameras are coloured by frame, interpolated poses marked x, viewing
    directions drawn as arrows."""
    c2w = cams["c2w"]
    reg = np.asarray(cams["registered"], bool)
    R = _mean_camera_axes(c2w)
    origin = c2w[:, :3, 3].mean(axis=0)
    centres = (c2w[:, :3, 3] - origin) @ R  # (N, 3): right, down, forward
    forward = c2w[:, :3, 2] @ R
    pts = (xyz - origin) @ R
    if len(pts) > _MAX_PLOT_POINTS:
        pts = pts[np.random.default_rng(0).choice(len(pts), _MAX_PLOT_POINTS, replace=False)]
    # the scene views span the central 98 % of the points and every camera: far outliers
    # would shrink the scene to a dot
    both = np.concatenate([np.percentile(pts, [1, 99], axis=0), centres]) if len(pts) else centres
    lo, hi = _limits(both)
    path_lo, path_hi = _limits(centres, pad=0.25)

    fig = _figure(15, 5.5)
    axes = fig.subplots(1, 3)
    views = [
        ((0, 2, 1.0), lo, hi, "right", "forward", "from above", True),
        ((2, 1, -1.0), lo, hi, "forward", "up", "from the side", True),
        ((0, 2, 1.0), path_lo, path_hi, "right", "forward", "camera path from above", False),
    ]
    for ax, (plane, v_lo, v_hi, xlabel, ylabel, title, points) in zip(axes, views, strict=True):
        a, b, sb = plane
        if points:
            ax.scatter(pts[:, a], sb * pts[:, b], s=1, c="0.6", alpha=0.5, lw=0, label="SfM points")
        arrow = 0.08 * float((v_hi - v_lo)[[a, b]].max())
        sc = _draw_cameras(ax, centres, forward, reg, plane, arrow)
        ax.set_xlim(v_lo[a], v_hi[a])
        ax.set_ylim(*((v_lo[b], v_hi[b]) if sb > 0 else (-v_hi[b], -v_lo[b])))
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel(f"{xlabel} (SfM units)")
        ax.set_ylabel(f"{ylabel} (SfM units)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper right", fontsize=7, markerscale=2)
    fig.colorbar(sc, ax=axes, label="frame", shrink=0.8)
    f = float(cams["K"][0, 0])
    fig.suptitle(
        f"{scene or ''} camera path: {int(reg.sum())}/{len(reg)} registered, f = {f:.1f} px"
        + (f", horizontal FOV {fov:.1f} deg" if fov is not None else "")
        + f", {len(xyz)} points"
    )
    _save(fig, path)


def plot_depth(
    path: Path,
    rho: np.ndarray,
    threshold: float,
    worst: tuple[str, np.ndarray, np.ndarray] | None,
    scene: str | None,
) -> None:
    """Per-frame Spearman correlation of the disparity maps with the SfM points, and a
    scatter of the worst frame's points (SfM disparity vs. the map's)."""
    fig = _figure(11, 4.5)
    ax1, ax2 = fig.subplots(1, 2)
    t = np.arange(len(rho))
    ax1.plot(t, rho, "o-", ms=3, color="tab:green", label="Spearman rho")
    ax1.axhline(threshold, ls="--", color="0.4", lw=1, label="threshold")
    ax1.set_ylim(min(-0.05, float(np.nanmin(rho)) - 0.05) if np.isfinite(rho).any() else 0, 1.02)
    ax1.set_xlabel("frame")
    ax1.set_ylabel("rank correlation")
    ax1.set_title(f"{scene or ''} disparity maps vs. static SfM points")
    ax1.legend(loc="lower right", fontsize=8)
    ax1.grid(alpha=0.3)
    if worst is not None:
        name, sfm_disp, map_disp = worst
        ax2.scatter(sfm_disp, map_disp, s=4, alpha=0.6)
        ax2.set_title(f"worst frame {name}: rho {float(np.nanmin(rho)):.3f}")
    else:
        ax2.set_title("no frame sees enough static SfM points")
    ax2.set_xlabel("SfM point disparity (1 / z)")
    ax2.set_ylabel("disparity map at the point")
    ax2.grid(alpha=0.3)
    _save(fig, path)

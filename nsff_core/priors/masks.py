"""Motion masks: 8-bit PNGs, 255 = dynamic (DESIGN.md section 3).

Backends:

- ``epipolar`` (weights-free): a pixel is dynamic when its optical flow to a neighbouring frame
  disagrees with the dominant camera motion. The camera motion between frames t and t+-1 is a
  fundamental matrix F fitted by RANSAC to flow correspondences that pass the forward-backward
  test; a pixel's disagreement is its Sampson distance to F (pixels). Pixels above a threshold
  in any neighbour are cleaned up by morphology (open, close, small-component removal) and the
  result is dilated.
- ``none``: no pixel is dynamic.

Known limit: an object moving along the epipolar lines of the camera motion (e.g. sideways with a
sideways-moving camera) looks static to this test; such scenes need the semantic masks.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from ..config import MasksConfig
from ..errors import StageError
from ..io import atomic_dir, frame_name, list_frames, read_flo, read_image, read_mask, write_mask
from . import pretrained as P

log = logging.getLogger(__name__)


def pixel_grid(h: int, w: int) -> np.ndarray:
    """Homogeneous pixel centres (H, W, 3) float64: (x, y, 1) with integer x, y."""
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    return np.stack([gx, gy, np.ones_like(gx)], axis=-1)


def sampson_distance(F: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sampson distance (pixels) of every correspondence p -> p + flow(p) to F.

    ``F`` (3, 3) maps points of the first image to epipolar lines in the second
    (x2^T F x1 = 0). Returns (H, W). The Sampson distance is the first-order approximation of
    the geometric (reprojection) error: |x2^T F x1| / sqrt((F x1)_1^2 + (F x1)_2^2 +
    (F^T x2)_1^2 + (F^T x2)_2^2).
    """
    h, w = flow.shape[:2]
    x1 = pixel_grid(h, w)
    x2 = x1.copy()
    x2[..., :2] += flow
    Fx1 = x1 @ F.T
    Ftx2 = x2 @ F
    num = np.abs(np.sum(x2 * Fx1, axis=-1))
    den = np.sqrt(Fx1[..., 0] ** 2 + Fx1[..., 1] ** 2 + Ftx2[..., 0] ** 2 + Ftx2[..., 1] ** 2)
    return num / np.maximum(den, 1e-12)


def fit_fundamental(
    flow: np.ndarray, valid: np.ndarray, cfg: MasksConfig, rng: np.random.Generator
) -> np.ndarray | None:
    """RANSAC fundamental matrix from flow correspondences on ``valid`` pixels, or None."""
    import cv2

    ys, xs = np.nonzero(valid)
    if len(xs) < 16:
        return None
    if len(xs) > cfg.num_correspondences:
        pick = rng.choice(len(xs), cfg.num_correspondences, replace=False)
        xs, ys = xs[pick], ys[pick]
    p1 = np.stack([xs, ys], -1).astype(np.float64)
    p2 = p1 + flow[ys, xs].astype(np.float64)
    F, _ = cv2.findFundamentalMat(p1, p2, cv2.FM_RANSAC, cfg.ransac_threshold, 0.999, 5000)
    if F is None or F.shape != (3, 3):
        return None
    return F


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Set the pixels (H, W) that the mask encloses completely, i.e. that the outside of the
    image cannot reach without crossing it (a flat patch in the middle of a mover)."""
    import cv2

    h, w = mask.shape
    outside = np.ones((h + 2, w + 2), np.uint8)
    outside[1:-1, 1:-1] = mask == 0
    flood = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(outside, flood, (0, 0), 2)
    return (outside[1:-1, 1:-1] != 2).astype(mask.dtype)


def clean_mask(raw: np.ndarray, cfg: MasksConfig) -> np.ndarray:
    """Morphological clean-up of a raw bool (H, W) motion mask, then dilation."""
    import cv2

    m = raw.astype(np.uint8)
    if cfg.open_size > 1:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (cfg.open_size, cfg.open_size))
        m = cv2.morphologyEx(m, cv2.MORPH_OPEN, k)
    if cfg.close_size > 1:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (cfg.close_size, cfg.close_size))
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, k)
    if cfg.fill_holes:
        m = fill_holes(m)
    if cfg.min_area_fraction > 0:
        n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        min_area = cfg.min_area_fraction * m.size
        keep = np.zeros(n, bool)
        keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_area
        m = keep[labels].astype(np.uint8)
    if cfg.dilate > 0:
        d = 2 * cfg.dilate + 1
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (d, d))
        m = cv2.dilate(m, k)
    return m.astype(bool)


def textured(rgb: np.ndarray, min_texture: float) -> np.ndarray:
    """Pixels (H, W) bool where optical flow is determined in both directions.

    The test is the smaller eigenvalue of the 7x7 structure tensor of the grey image (intensity
    in [0, 1]) against ``min_texture``: flat regions (sky, walls) and single edges (stripes, the
    aperture problem) have a small one, and their flow says nothing about motion.
    """
    import cv2

    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    return cv2.cornerMinEigenVal(grey, 7, 3) >= min_texture


def epipolar_motion_mask(
    flows: list[np.ndarray],
    oks: list[np.ndarray],
    cfg: MasksConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[float]]:
    """Raw motion mask of one frame from its flows to neighbouring frames.

    Args:
        flows: flows (H, W, 2) from this frame to each neighbour (pixels).
        oks: where each flow is trusted (H, W) bool: forward-backward consistent and textured.

    Returns:
        the bool (H, W) mask (True where any neighbour's consistent flow has a Sampson distance
        above ``cfg.sampson_threshold``) and, per neighbour, the median Sampson distance of the
        consistent pixels (a residual that says how well one F explains the frame).
    """
    h, w = flows[0].shape[:2]
    raw = np.zeros((h, w), bool)
    residuals = []
    for flow, ok in zip(flows, oks, strict=True):
        F = fit_fundamental(flow, ok, cfg, rng)
        if F is None:
            residuals.append(float("nan"))
            continue
        dist = sampson_distance(F, flow)
        raw |= (dist > cfg.sampson_threshold) & ok
        residuals.append(float(np.median(dist[ok])) if ok.any() else float("nan"))
    return raw, residuals


def compute_masks(
    frames_dir: str | Path,
    flow_fw_dir: str | Path | None,
    flow_bw_dir: str | Path | None,
    flow_ok_dir: str | Path | None,
    masks_dir: str | Path,
    cfg: MasksConfig,
    scene: str | None = None,
    *,
    frames_json: str | Path | None = None,
    weights: str | Path | None = None,
) -> dict:
    """Write ``masks_dir/{i:05d}.png`` (255 = dynamic) for every frame; returns a summary.

    The semantic backends (maskrcnn, detectron2) read the source frames through
    ``frames_json`` and their checkpoint through the ``weights`` marker
    (:mod:`nsff_core.priors.pretrained`).
    """
    if cfg.backend in ("maskrcnn", "detectron2"):
        return pretrained_masks(
            frames_dir,
            flow_fw_dir,
            flow_bw_dir,
            flow_ok_dir,
            masks_dir,
            cfg,
            frames_json,
            weights,
            scene,
        )
    frames = list_frames(frames_dir)
    if not frames:
        raise StageError(
            scene, "masks", f"no frames in {frames_dir}", "rerun the 'frames' rule for this scene"
        )
    if cfg.backend not in ("epipolar", "none"):
        raise StageError(
            scene,
            "masks",
            f"unknown masks backend {cfg.backend!r}",
            "set masks.backend to 'epipolar' or 'none' (config.yaml or the scene sheet)",
        )
    h, w = read_image(frames[0], made_by="frames").shape[:2]
    n = len(frames)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    fractions, residuals = [], []
    with atomic_dir(masks_dir) as out:
        for i in range(n):
            if cfg.backend == "none":
                mask = np.zeros((h, w), bool)
            else:
                flows, oks = [], []
                if i < n - 1:
                    flows.append(read_flo(Path(flow_fw_dir) / frame_name(i, ".flo")))
                    oks.append(read_mask(Path(flow_ok_dir) / f"{i:05d}_fw.png", made_by="flow"))
                if i > 0:
                    flows.append(read_flo(Path(flow_bw_dir) / frame_name(i, ".flo")))
                    oks.append(read_mask(Path(flow_ok_dir) / f"{i:05d}_bw.png", made_by="flow"))
                if cfg.min_texture > 0:
                    tex = textured(read_image(frames[i], made_by="frames"), cfg.min_texture)
                    oks = [ok & tex for ok in oks]
                raw, res = epipolar_motion_mask(flows, oks, cfg, rng)
                residuals += res
                mask = clean_mask(raw, cfg)
            write_mask(out / frame_name(i), mask)
            fractions.append(float(mask.mean()))
            if (i + 1) % max(1, n // 10) == 0 or i == n - 1:
                log.info("masks: frame %d/%d (%.1f s)", i + 1, n, time.perf_counter() - t0)
    summary = {
        "backend": cfg.backend,
        "frames": n,
        "mean_dynamic_fraction": float(np.mean(fractions)),
        "median_sampson_residual_px": float(np.nanmedian(residuals)) if residuals else None,
        "seconds": time.perf_counter() - t0,
    }
    if cfg.backend == "epipolar" and summary["mean_dynamic_fraction"] > 0.5:
        log.warning(
            "masks: on average %.0f%% of each frame is marked dynamic; the camera motion may be "
            "too small or too rotational for the epipolar test (try masks.sampson_threshold or "
            "a semantic backend)",
            100 * summary["mean_dynamic_fraction"],
        )
    log.info("masks: done %s", summary)
    return summary


def pretrained_masks(
    frames_dir: str | Path,
    flow_fw_dir: str | Path | None,
    flow_bw_dir: str | Path | None,
    flow_ok_dir: str | Path | None,
    masks_dir: str | Path,
    cfg: MasksConfig,
    frames_json: str | Path | None,
    weights: str | Path | None,
    scene: str | None = None,
) -> dict:
    """COCO instance masks of the configured classes (union with the epipolar masks when
    ``cfg.union_epipolar``), dilated, at training resolution."""
    P.require(frames_json, "frames.json", "masks", scene)
    P.require(weights, "the weights.json marker", "masks", scene)
    from . import maskrcnn

    with tempfile.TemporaryDirectory(dir=Path(masks_dir).parent) as tmp:
        union = None
        if cfg.union_epipolar:
            union = Path(tmp) / "epipolar"
            epipolar = dataclasses.replace(cfg, backend="epipolar")
            compute_masks(frames_dir, flow_fw_dir, flow_bw_dir, flow_ok_dir, union, epipolar, scene)
        if cfg.backend == "maskrcnn":
            fn, name = maskrcnn.compute_masks_maskrcnn, "maskrcnn_v2_coco"
        else:
            maskrcnn.require_detectron2(scene)
            fn, name = maskrcnn.compute_masks_detectron2, "detectron2_r50_fpn_3x"
        return fn(
            P.source_frames(frames_json, "masks", scene),
            masks_dir,
            P.training_hw(frames_json),
            classes=cfg.classes,
            score_threshold=cfg.score_threshold,
            dilate_px=cfg.dilate,
            checkpoint=P.checkpoint(weights, name, "masks", scene),
            union_with=union,
            scene=scene,
        )

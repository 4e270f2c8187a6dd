"""Optical-flow prior between neighbouring frames, with forward-backward consistency masks.

Outputs (DESIGN.md section 3), all at training resolution (the frames' resolution):

- ``flow_fw/{i:05d}.flo``: flow from frame i to i+1, for i = 0 .. N-2
- ``flow_bw/{i:05d}.flo``: flow from frame i to i-1, for i = 1 .. N-1
- ``flow_ok/{i:05d}_fw.png`` / ``{i:05d}_bw.png``: 255 where the flow passes the
  forward-backward test of Sundaram et al. (ECCV 2010) and lands inside the image.

Backends: ``dis`` (OpenCV DIS, weights-free). RAFT is added by the pretrained-backend work.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ..config import FlowConfig
from ..errors import StageError
from ..io import atomic_dir, frame_name, list_frames, read_image, write_flo, write_mask
from . import pretrained as P

log = logging.getLogger(__name__)

_DIS_PRESETS = ("ultrafast", "fast", "medium")


def sample_flow(field: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Bilinearly sample ``field`` (H, W, C) at ``p + flow(p)`` for every pixel p.

    Pixels are addressed by integer centres (x, y); samples outside the image replicate the
    border. Returns (H, W, C) float32.
    """
    import cv2

    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x = gx + flow[..., 0].astype(np.float32)
    map_y = gy + flow[..., 1].astype(np.float32)
    out = cv2.remap(
        field.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return out.reshape(h, w, -1)


def consistency_mask(
    flow_ab: np.ndarray, flow_ba: np.ndarray, alpha1: float = 0.01, alpha2: float = 0.5
) -> np.ndarray:
    """Forward-backward consistency of ``flow_ab`` (a to b) given ``flow_ba`` (b to a).

    A pixel p of frame a is consistent when its target p + f(p) lies inside frame b and
    ``|f + g|^2 < alpha1 (|f|^2 + |g|^2) + alpha2``, with g = flow_ba sampled at p + f(p)
    (pixels). Returns a bool (H, W) mask.

    Example: f = (2, 0) everywhere and g = (-2, 0) everywhere gives |f + g| = 0: consistent.
    """
    h, w = flow_ab.shape[:2]
    back = sample_flow(flow_ba, flow_ab)
    err = np.sum((flow_ab + back) ** 2, axis=-1)
    bound = alpha1 * (np.sum(flow_ab**2, -1) + np.sum(back**2, -1)) + alpha2
    gx, gy = np.meshgrid(np.arange(w), np.arange(h))
    tx, ty = gx + flow_ab[..., 0], gy + flow_ab[..., 1]
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    return (err < bound) & inside


class DisFlow:
    """OpenCV's Dense Inverse Search optical flow on grey images (Kroeger et al., ECCV 2016)."""

    def __init__(self, preset: str = "medium") -> None:
        import cv2

        if preset not in _DIS_PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; choose one of {_DIS_PRESETS}")
        code = {
            "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
            "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
            "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
        }[preset]
        self._dis = cv2.DISOpticalFlow_create(code)

    def __call__(self, rgb_a: np.ndarray, rgb_b: np.ndarray) -> np.ndarray:
        """Flow (H, W, 2) float32 in pixels from image a to image b (RGB uint8)."""
        import cv2

        grey_a = cv2.cvtColor(rgb_a, cv2.COLOR_RGB2GRAY)
        grey_b = cv2.cvtColor(rgb_b, cv2.COLOR_RGB2GRAY)
        return self._dis.calc(grey_a, grey_b, None).astype(np.float32)


def make_flow_backend(cfg: FlowConfig):
    """The flow estimator named by ``cfg.backend``: a callable (rgb_a, rgb_b) -> (H, W, 2)."""
    if cfg.backend == "dis":
        return DisFlow(cfg.dis_preset)
    raise ValueError(f"unknown flow backend {cfg.backend!r}")


def compute_flow(
    frames_dir: str | Path,
    flow_fw_dir: str | Path,
    flow_bw_dir: str | Path,
    flow_ok_dir: str | Path,
    cfg: FlowConfig,
    scene: str | None = None,
    *,
    frames_json: str | Path | None = None,
    weights: str | Path | None = None,
) -> dict:
    """Compute forward and backward flow for all neighbouring frames of ``frames_dir``.

    Writes the three output folders atomically (all or nothing) and returns a summary with the
    fraction of consistent pixels and the mean flow magnitude. The pretrained backend (raft)
    reads the source frames through ``frames_json`` and its checkpoint through the ``weights``
    marker (:mod:`nsff_core.priors.pretrained`).
    """
    if cfg.backend == "raft":
        return pretrained_flow(
            flow_fw_dir, flow_bw_dir, flow_ok_dir, cfg, frames_json, weights, scene
        )
    frames = list_frames(frames_dir)
    if len(frames) < 2:
        raise StageError(
            scene,
            "flow",
            f"found {len(frames)} frame(s) in {frames_dir}; optical flow needs at least 2",
            "rerun the 'frames' rule (delete its outputs) and check the scene's source",
        )
    try:
        estimator = make_flow_backend(cfg)
    except ValueError as exc:
        raise StageError(scene, "flow", str(exc), "set flow.backend / flow.dis_preset") from exc

    n = len(frames)
    t0 = time.perf_counter()
    consistent, magnitude = [], []
    with (
        atomic_dir(flow_fw_dir) as fw_dir,
        atomic_dir(flow_bw_dir) as bw_dir,
        atomic_dir(flow_ok_dir) as ok_dir,
    ):
        img_a = read_image(frames[0], made_by="frames")
        for i in range(n - 1):
            img_b = read_image(frames[i + 1], made_by="frames")
            if img_b.shape != img_a.shape:
                raise StageError(
                    scene,
                    "flow",
                    f"{frames[i + 1].name} is {img_b.shape[1]}x{img_b.shape[0]} but "
                    f"{frames[i].name} is {img_a.shape[1]}x{img_a.shape[0]}",
                    "rerun the 'frames' rule, which resizes every frame to one size",
                )
            fw = estimator(img_a, img_b)
            bw = estimator(img_b, img_a)
            ok_fw = consistency_mask(fw, bw, cfg.consistency_alpha1, cfg.consistency_alpha2)
            ok_bw = consistency_mask(bw, fw, cfg.consistency_alpha1, cfg.consistency_alpha2)
            write_flo(fw_dir / frame_name(i, ".flo"), fw)
            write_flo(bw_dir / frame_name(i + 1, ".flo"), bw)
            write_mask(ok_dir / f"{i:05d}_fw.png", ok_fw)
            write_mask(ok_dir / f"{i + 1:05d}_bw.png", ok_bw)
            consistent += [ok_fw.mean(), ok_bw.mean()]
            magnitude.append(float(np.linalg.norm(fw, axis=-1).mean()))
            if (i + 1) % max(1, (n - 1) // 10) == 0 or i == n - 2:
                log.info("flow: pair %d/%d (%.1f s)", i + 1, n - 1, time.perf_counter() - t0)
            img_a = img_b
    summary = {
        "backend": cfg.backend,
        "pairs": n - 1,
        "consistent_fraction": float(np.mean(consistent)),
        "mean_magnitude_px": float(np.mean(magnitude)),
        "seconds": time.perf_counter() - t0,
    }
    log.info("flow: done %s", summary)
    return summary


def pretrained_flow(
    flow_fw_dir: str | Path,
    flow_bw_dir: str | Path,
    flow_ok_dir: str | Path,
    cfg: FlowConfig,
    frames_json: str | Path | None,
    weights: str | Path | None,
    scene: str | None = None,
) -> dict:
    """RAFT-Large flow at source resolution, resized to the training size (vectors scaled)."""
    P.require(frames_json, "frames.json", "flow", scene)
    P.require(weights, "the weights.json marker", "flow", scene)
    from .raft import compute_flow_raft

    return compute_flow_raft(
        P.source_frames(frames_json, "flow", scene),
        flow_fw_dir,
        flow_bw_dir,
        flow_ok_dir,
        out_hw=P.training_hw(frames_json),
        iters=cfg.raft_iters,
        checkpoint=P.checkpoint(weights, "raft_large", "flow", scene),
        alpha1=cfg.consistency_alpha1,
        alpha2=cfg.consistency_alpha2,
        scene=scene,
    )

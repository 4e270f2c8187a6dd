"""Motion masks: 8-bit PNGs, 255 = dynamic, one per frame (``masks/{i:05d}.png``).

Backends:

- ``epipolar`` (weights-free): a pixel is dynamic when its optical flow to a neighbouring frame
  disagrees with the dominant camera motion. The camera motion between frames t and t+-1 is a
  fundamental matrix F fitted by RANSAC to flow correspondences that pass the forward-backward
  test; a pixel's disagreement is its Sampson distance to F (pixels). Pixels above a threshold
  in any neighbour are cleaned up by morphology (open, close, small-component removal) and the
  result is dilated.
- ``rigidity`` (weights-free, the default): flow against the SfM cameras and the depth prior
  (:mod:`nsff_core.priors.nets.rigidity`).
- ``none``: no pixel is dynamic.

The weights-free masks are then carried through the frames where a mover rests
(:func:`persist_masks`, ``masks.persist_frames``): a mover that stops is static then, and no
flow test sees it.

Known limit of ``epipolar``: an object moving along the epipolar lines of the camera motion (e.g.
sideways with a sideways-moving camera) looks static to this test; such scenes need the
semantic masks (or ``rigidity``).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from nsff_core.model.io import (
    atomic_dir,
    frame_name,
    list_frames,
    read_flo,
    read_image,
    read_mask,
    write_mask,
)

from ..config import MasksConfig
from ..errors import StageError
from . import backends
from .nets import pretrained as P
from .nets.flow_ops import textured

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


def sfm_masks_config(cfg: MasksConfig) -> MasksConfig:
    """Settings of the masks that SfM and the depth prior see (rule ``sfm_masks``).

    They are made before SfM, so the rigidity test (which needs the SfM cameras) is replaced by
    the epipolar one, and a semantic backend masks every instance of its classes (no motion
    filter: a static person left out of SfM costs a few features, a moving one put in breaks
    it) united with the epipolar masks.
    """
    margin = max(cfg.dilate, SFM_MASK_MIN_DILATE)
    if cfg.backend in SEMANTIC_BACKENDS:
        return dataclasses.replace(
            cfg, min_moving_fraction=0.0, motion_backend="epipolar", dilate=margin
        )
    if cfg.backend == "rigidity":
        return dataclasses.replace(cfg, backend="epipolar", dilate=margin)
    return dataclasses.replace(cfg, dilate=margin)


#: the masks SfM sees keep at least this margin (px) around movers: a feature on a mover's edge
#: costs SfM more than a lost background feature
SFM_MASK_MIN_DILATE = 3
#: backends that run a pretrained instance-segmentation model (from the backend registry)
SEMANTIC_BACKENDS = backends.names("masks", pretrained=True)
#: the weights-free backends
MOTION_BACKENDS = backends.names("masks", pretrained=False)


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
    cameras: str | Path | None = None,
    disp_dir: str | Path | None = None,
) -> dict:
    """Write ``masks_dir/{i:05d}.png`` (255 = dynamic) for every frame; returns a summary.

    The ``rigidity`` backend (and a semantic backend whose ``motion_backend`` is rigidity)
    needs the SfM ``cameras`` (cameras.npz) and the depth prior ``disp_dir``. The semantic
    backends (maskrcnn, detectron2) read the source frames through ``frames_json`` and their
    checkpoint through the ``weights`` marker (:mod:`nsff_core.priors.nets.pretrained`).

    The backend is the record ``cfg.backend`` of :mod:`nsff_core.priors.backends`; an unknown
    name takes the weights-free path, which reports it.
    """
    run = backends.run_function("masks", cfg.backend, fallback=motion_masks)
    return run(
        frames_dir,
        flow_fw_dir,
        flow_bw_dir,
        flow_ok_dir,
        masks_dir,
        cfg,
        scene,
        frames_json=frames_json,
        weights=weights,
        cameras=cameras,
        disp_dir=disp_dir,
    )


def motion_masks(
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
    cameras: str | Path | None = None,
    disp_dir: str | Path | None = None,
) -> dict:
    """The weights-free backends (rigidity, epipolar, none) of :func:`compute_masks` (same
    arguments; ``frames_json`` and ``weights`` unused)."""
    frames = list_frames(frames_dir)
    if not frames:
        raise StageError(
            scene, "masks", f"no frames in {frames_dir}", "rerun the 'frames' rule for this scene"
        )
    if cfg.backend not in MOTION_BACKENDS:
        raise StageError(
            scene,
            "masks",
            f"unknown masks backend {cfg.backend!r}",
            f"set masks.backend to one of {', '.join(backends.names('masks'))} "
            "(config.yaml or the scene sheet)",
        )
    h, w = read_image(frames[0], made_by="frames").shape[:2]
    n = len(frames)
    flows = _FlowCache(flow_fw_dir, flow_bw_dir, flow_ok_dir)
    geometry = None
    if cfg.backend == "rigidity":
        geometry = _rigidity_inputs(cameras, disp_dir, n, (h, w), scene)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    residuals = []
    masks = []
    for i in range(n):
        if cfg.backend == "none":
            mask = np.zeros((h, w), bool)
        else:
            rgb = read_image(frames[i], made_by="frames")
            if cfg.backend == "rigidity":
                from .nets.rigidity import frame_motion_mask

                K, c2w, disp = geometry
                neighbours = flows.neighbours(i, n, cfg.rigidity_neighbours)
                raw, res = frame_motion_mask(rgb, K, c2w, i, neighbours, disp(i), cfg)
                residuals.append(res)
            else:
                pairs = flows.neighbours(i, n, 1)
                flow_list = [f for _, f, _ in pairs]
                oks = [ok for _, _, ok in pairs]
                if cfg.min_texture > 0:
                    tex = textured(rgb, cfg.min_texture)
                    oks = [ok & tex for ok in oks]
                raw, res = epipolar_motion_mask(flow_list, oks, cfg, rng)
                residuals += res
            mask = clean_mask(raw, cfg)
        masks.append(mask)
        if (i + 1) % max(1, n // 10) == 0 or i == n - 1:
            log.info("masks: frame %d/%d (%.1f s)", i + 1, n, time.perf_counter() - t0)
    carried = 0.0
    if cfg.backend != "none" and cfg.persist_frames > 0 and n > 1:
        detected = masks
        masks = persist_masks(detected, flow_fw_dir, flow_bw_dir, flow_ok_dir, cfg)
        carried = float(np.mean([(m & ~d).mean() for m, d in zip(masks, detected, strict=True)]))
    with atomic_dir(masks_dir) as out:
        for i, mask in enumerate(masks):
            write_mask(out / frame_name(i), mask)
    fractions = [float(m.mean()) for m in masks]
    summary = {
        "backend": cfg.backend,
        "frames": n,
        "mean_dynamic_fraction": float(np.mean(fractions)),
        "mean_carried_fraction": carried,
        "median_residual_px": float(np.nanmedian(residuals)) if residuals else None,
        "seconds": time.perf_counter() - t0,
    }
    if cfg.backend != "none" and summary["mean_dynamic_fraction"] > 0.5:
        log.warning(
            "masks: on average %.0f%% of each frame is marked dynamic; the camera motion may be "
            "too small or too rotational for the %s test (try masks.%s or a semantic backend)",
            100 * summary["mean_dynamic_fraction"],
            cfg.backend,
            "rigidity_threshold" if cfg.backend == "rigidity" else "sampson_threshold",
        )
    log.info("masks: done %s", summary)
    return summary


def persist_masks(
    masks: list[np.ndarray],
    flow_fw_dir: str | Path,
    flow_bw_dir: str | Path,
    flow_ok_dir: str | Path,
    cfg: MasksConfig,
) -> list[np.ndarray]:
    """The motion masks with movers that stop kept masked while they rest.

    A mover that stops is static while it rests, so no flow test sees it then; but it was
    masked while it moved. Each connected part of a mask is followed from frame to frame as a
    whole, moved by the median flow of its pixels (so it keeps its shape and leaves no trail on
    the background it uncovers), once forward through the clip and once backward. Where the
    next frame's own mask covers at most half of the moved part, the moved part is added to
    that frame's mask and followed on, up to ``cfg.persist_frames`` frames from where it was
    last detected. Only parts confirmed by the frame before (in the pass's order) are carried:
    parts that overlap a part of about their size followed from there (a false detection in a
    single frame, or one merged with a mover in one frame, is not spread over its neighbours),
    at least ``PERSIST_MIN_THICKNESS`` pixels thick somewhere (false detections along depth
    edges are thin), off the frame's edge, and whose median flow since the frame before differs
    from that of the unmasked pixels around them by at least ``PERSIST_MIN_MOTION`` of the
    frame width (a region of sky that the clean-up enclosed moves with the scene).

    Args:
        masks: the detected (H, W) bool masks of every frame, in order.
        flow_fw_dir, flow_bw_dir, flow_ok_dir: the flow rule's folders (frame i to i+1 and to
            i-1, and where each passes the forward-backward test).
        cfg: ``persist_frames``.

    Returns:
        New masks (the detected ones are not modified): detected | carried.
    """
    import cv2

    n, limit = len(masks), cfg.persist_frames
    out = [m.copy() for m in masks]
    passes = ((1, flow_fw_dir, "fw", flow_bw_dir, "bw"), (-1, flow_bw_dir, "bw", flow_fw_dir, "fw"))
    for direction, folder, tag, back_folder, back_tag in passes:
        order = list(range(n)) if direction > 0 else list(range(n - 1, -1, -1))
        # every part moved into the current frame from the one before: (mask, frames since
        # it was detected (0: detected there), confirmed); those of age > 0 were carried
        incoming: list[tuple[np.ndarray, int, bool]] = []
        for prev, i in zip(order[:-1], order[1:], strict=True):
            count, labels = cv2.connectedComponents(masks[prev].astype(np.uint8), connectivity=8)
            detected = [labels == k for k in range(1, count)]
            flow, ok = _flow_to(folder, tag, prev, flow_ok_dir)
            # a detected part is confirmed when it is thick (false detections along depth edges
            # are thin), a part of about its size moved into its frame overlaps it (a region
            # detected in one frame only, or merged with a false detection, is not), and it
            # moved unlike the static scene around it since that frame (a region of sky or
            # wall that the clean-up enclosed moves with it)
            parts, back = [], None
            for m in detected:
                confirmed = _thick(m) and any(_same_part(m, t) for t, _, _ in incoming)
                if confirmed:
                    back = back or _flow_to(back_folder, back_tag, prev, flow_ok_dir)
                    confirmed = _moves_apart(*back, m, masks[prev])
                parts.append((m, 0, confirmed))
            parts += [t for t in incoming if t[1] > 0]
            incoming = []
            for m, age, confirmed in parts:
                moved = _shift(m, _median_flow(flow, ok, m))
                area = int(moved.sum())
                if not area:
                    continue  # it left the frame
                # a part at the frame's edge is not followed as a whole (it is cut there, and
                # the flow is least reliable there: content without a counterpart)
                carry = confirmed and age + 1 <= limit and not _touches_edge(moved)
                # where frame i's own mask covers most of it, that detection is the mask
                carry = carry and (moved & masks[i]).sum() <= 0.5 * area
                if carry:
                    out[i] |= moved
                incoming.append((moved, age + 1 if carry else 0, confirmed))
    return out


def _median_flow(flow: np.ndarray, ok: np.ndarray, part: np.ndarray) -> tuple[int, int]:
    """The median flow (dx, dy) of a mask part, rounded to pixels: of its pixels whose flow
    passes the forward-backward test, or of all of them when none does."""
    sel = part & ok
    if not sel.any():
        sel = part
    d = np.median(flow[sel], axis=0)
    return int(round(float(d[0]))), int(round(float(d[1])))


#: parts of a mask thinner than this (px) everywhere are not carried by :func:`persist_masks`
PERSIST_MIN_THICKNESS = 5


def _thick(mask: np.ndarray) -> bool:
    """Whether some disc of diameter PERSIST_MIN_THICKNESS fits inside the mask part."""
    import cv2

    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (PERSIST_MIN_THICKNESS, PERSIST_MIN_THICKNESS))
    return bool(cv2.erode(mask.astype(np.uint8), k).any())


def _same_part(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two mask parts overlap and their areas differ by at most a factor 1.5."""
    sa, sb = int(a.sum()), int(b.sum())
    return bool((a & b).any()) and 2 * max(sa, sb) <= 3 * min(sa, sb)


def _flow_to(folder, tag: str, i: int, ok_dir) -> tuple[np.ndarray, np.ndarray]:
    """(flow, ok) of frame i in the flow folder ``folder`` (``tag`` fw or bw)."""
    flow = read_flo(Path(folder) / frame_name(i, ".flo"))
    return flow, read_mask(Path(ok_dir) / f"{i:05d}_{tag}.png", made_by="flow")


#: a part is carried only when its median flow differs from that of the static pixels around
#: it by at least this share of the frame width (:func:`persist_masks`): 1.9 px at 320 px. The
#: movers of the suite and the DAVIS rollercoaster's train differ by 2-9 px at 320; a false
#: detection on a box's near edge (suite_ball, parallax against the wall behind) by up to 1.5
PERSIST_MIN_MOTION = 0.006


def _moves_apart(flow: np.ndarray, ok: np.ndarray, part: np.ndarray, mask: np.ndarray) -> bool:
    """Whether a mask part's median flow differs from that of a ring of unmasked pixels around
    it (up to 8 px away) by at least PERSIST_MIN_MOTION of the frame width (pixels passing the
    forward-backward test; False when either side has fewer than 16 of them)."""
    import cv2

    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (17, 17))
    ring = cv2.dilate(part.astype(np.uint8), k).astype(bool) & ~mask & ok
    inside = part & ok
    if ring.sum() < 16 or inside.sum() < 16:
        return False
    d = np.median(flow[inside], axis=0) - np.median(flow[ring], axis=0)
    return bool(np.hypot(d[0], d[1]) >= PERSIST_MIN_MOTION * part.shape[1])


def _touches_edge(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def _shift(mask: np.ndarray, d: tuple[int, int]) -> np.ndarray:
    """``mask`` translated by (dx, dy) pixels; what leaves the frame is dropped."""
    dx, dy = d
    h, w = mask.shape
    out = np.zeros_like(mask)
    if abs(dx) >= w or abs(dy) >= h:
        return out
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = mask[ys, xs]
    return out


class _FlowCache:
    """The flows of a scene, read on demand and kept for the few frames a window needs."""

    def __init__(self, fw_dir, bw_dir, ok_dir) -> None:
        self.fw_dir, self.bw_dir, self.ok_dir = fw_dir, bw_dir, ok_dir
        self._cache: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}

    def step(self, i: int, direction: int) -> tuple[np.ndarray, np.ndarray]:
        """(flow, ok) from frame i to i + direction (+1 or -1)."""
        key = ("fw" if direction > 0 else "bw", i)
        if key not in self._cache:
            folder = self.fw_dir if direction > 0 else self.bw_dir
            self._cache[key] = _flow_to(folder, key[0], i, self.ok_dir)
            for old in [k for k in self._cache if k[1] < i - 4]:
                del self._cache[old]
        return self._cache[key]

    def neighbours(self, i: int, n: int, reach: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """``(j, flow i->j, ok)`` for j = i +- 1 .. i +- reach inside [0, n), nearest first;
        flows to farther frames are chained through the frames between."""
        from .nets.rigidity import chain_flow

        out = []
        for direction in (1, -1):
            flow = ok = None
            for k in range(1, max(1, reach) + 1):
                j = i + direction * k
                if not 0 <= j < n:
                    break
                f, o = self.step(j - direction, direction)
                flow, ok = (f, o) if flow is None else chain_flow(flow, ok, f, o)
                out.append((j, flow, ok))
        return sorted(out, key=lambda t: abs(t[0] - i))


def _rigidity_inputs(cameras, disp_dir, n: int, hw: tuple[int, int], scene: str | None):
    """(K, c2w, disparity(i)) for the rigidity test, checked against the frames."""
    from nsff_core.model.io import read_cameras, read_disparity

    if cameras is None or disp_dir is None:
        raise StageError(
            scene,
            "masks",
            "the rigidity backend needs the SfM cameras and the depth prior",
            "run it through the workflow (rule masks runs after sfm and depth), or set "
            "masks.backend: epipolar",
        )
    cams = read_cameras(cameras)
    c2w, K = np.asarray(cams["c2w"], np.float64), np.asarray(cams["K"], np.float64)
    if len(c2w) != n or tuple(int(v) for v in cams["hw"]) != tuple(hw):
        raise StageError(
            scene,
            "masks",
            f"{cameras} holds {len(c2w)} cameras at {tuple(cams['hw'])} but there are {n} "
            f"frames at {hw}",
            "rerun sfm for this scene (delete its cameras.npz)",
        )

    def disparity(i: int) -> np.ndarray:
        d = read_disparity(Path(disp_dir) / frame_name(i, ".npy"))
        if d.shape != tuple(hw):
            raise StageError(
                scene,
                "masks",
                f"disparity {i} is {d.shape[1]}x{d.shape[0]}, the frames {hw[1]}x{hw[0]}",
                "rerun the depth rule for this scene",
            )
        return d

    return K, c2w, disparity


def pretrained_masks(
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
    cameras: str | Path | None = None,
    disp_dir: str | Path | None = None,
) -> dict:
    """The semantic backends (maskrcnn, detectron2) of :func:`compute_masks` (same arguments):
    COCO instance masks of the configured classes at training resolution.

    With ``cfg.min_moving_fraction`` > 0 an instance is kept only when that share of its pixels
    is dynamic in the weights-free motion masks (``cfg.motion_backend``), so a seated person is
    not masked; with ``cfg.union_motion`` the motion masks are united with the kept instances
    (movers outside the COCO classes)."""
    P.require(frames_json, "frames.json", "masks", scene)
    P.require(weights, "the weights.json marker", "masks", scene)
    from .frames import read_source_frames
    from .nets import maskrcnn
    from .weights import resolve_from_marker

    with tempfile.TemporaryDirectory(dir=Path(masks_dir).parent) as tmp:
        motion = None
        if cfg.union_motion or cfg.min_moving_fraction > 0:
            motion = Path(tmp) / "motion"
            motion_cfg = dataclasses.replace(cfg, backend=cfg.motion_backend)
            compute_masks(
                frames_dir,
                flow_fw_dir,
                flow_bw_dir,
                flow_ok_dir,
                motion,
                motion_cfg,
                scene,
                cameras=cameras,
                disp_dir=disp_dir,
            )
        if cfg.backend == "maskrcnn":
            fn = maskrcnn.compute_masks_maskrcnn
        else:
            maskrcnn.require_detectron2(scene)
            fn = maskrcnn.compute_masks_detectron2
        name = backends.get("masks", cfg.backend).weights[0]
        return fn(
            read_source_frames(frames_json, scene=scene, stage="masks"),
            masks_dir,
            P.training_hw(frames_json),
            classes=cfg.classes,
            score_threshold=cfg.score_threshold,
            dilate_px=cfg.dilate,
            checkpoint=resolve_from_marker(weights, name, scene, "masks"),
            motion=motion,
            min_moving_fraction=cfg.min_moving_fraction,
            union_motion=cfg.union_motion,
            scene=scene,
        )

"""Rigidity test for motion masks: does a pixel's flow fit one static 3D point?

With the cameras of structure from motion (K, camera-to-world poses) a static point seen at pixel
p of frame i, at inverse depth D (disparity, 1 / camera-z), appears in frame j at

    x_j ~ K R K^-1 p + D K t        (R, t: camera i -> camera j)

so every neighbour j constrains the same single unknown D. :func:`rigidity_residuals` finds, per
pixel, the D that best explains the measured flows to all neighbours (Gauss-Newton from the depth
prior) and reports two residuals in pixels:

- ``flow``: how far the measured flow lands from where the best static point would be seen. It
  catches movers that leave the epipolar line (what the epipolar test sees) and movers that
  travel along it at a speed that no single depth explains in both neighbours.
- ``depth``: how far that best point lies from the depth prior, measured as the image distance
  between the point at D and at D clamped to [D0 / ratio, D0 * ratio] (D0 = the prior aligned to
  the triangulated depths of the frame). It catches movers whose flow looks like a static point
  at a wrong depth (e.g. a box sliding along the camera's path at a steady speed).

:func:`frame_motion_mask` turns the residuals into a mask: a per-frame noise scale, votes pooled
over colour segments (scikit-image's Felzenszwalb segmentation) so that a mover is covered up to
its colour edges and not only at its textured spots, and hysteresis. Parts of a mover whose
residual stays at the noise level (a torso whose motion looks like a static point at another
depth, next to swinging legs that are caught) are then joined to it by :func:`join_by_flow`:
segments that move with a confident mover rather than with the static scene around them.
"""

from __future__ import annotations

import numpy as np

#: a trusted pixel whose own score is below this share of the hysteresis floor is static even
#: inside a moving segment
STATIC_SHARE = 0.5
#: smallest |z| used in a division by a projected depth (points at the camera centre)
_EPS = 1e-9


def pixel_grid(h: int, w: int) -> np.ndarray:
    """Homogeneous pixel centres (H, W, 3) float64: (x, y, 1) with integer x, y."""
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    return np.stack([gx, gy, np.ones_like(gx)], axis=-1)


def _transfer(K: np.ndarray, c2w_i: np.ndarray, c2w_j: np.ndarray, grid: np.ndarray):
    """(q, e): frame-j homogeneous image of pixel p at inverse depth D is ``q + D e``."""
    T = np.linalg.inv(c2w_j) @ c2w_i
    R, t = T[:3, :3], T[:3, 3]
    q = grid @ (K @ R @ np.linalg.inv(K)).T
    return q, K @ t


def _project(q: np.ndarray, e: np.ndarray, D: np.ndarray) -> np.ndarray:
    num = q + D[..., None] * e
    z = num[..., 2:3]
    return num[..., :2] / np.where(np.abs(z) < _EPS, _EPS, z)


def _solve_disparity(obs, D0: np.ndarray, iterations: int) -> np.ndarray:
    """Per-pixel Gauss-Newton for D over the observations ``(q, e, target, weight)``."""
    D = D0.copy()
    for _ in range(iterations):
        num = np.zeros_like(D)
        den = np.zeros_like(D)
        for q, e, target, weight in obs:
            p = _project(q, e, D)
            z = q[..., 2] + D * e[2]
            g = (e[:2] - p * e[2]) / np.where(np.abs(z) < _EPS, _EPS, z)[..., None]
            num += weight * ((target - p) * g).sum(-1)
            den += weight * (g * g).sum(-1)
        D = D + num / np.maximum(den, 1e-12)
    return D


def align_prior(prior: np.ndarray, target: np.ndarray, use: np.ndarray) -> np.ndarray:
    """``a * prior + b`` fitted to ``target`` on the ``use`` pixels (least squares, twice: the
    second fit drops the worst 20 % of the first fit's residuals); the prior unchanged when too
    few pixels or a non-positive scale come out."""
    x, y = prior[use], target[use]
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 50 or np.ptp(x) <= 0:
        return prior
    for _ in range(2):
        A = np.stack([x, np.ones_like(x)], 1)
        (a, b), *_ = np.linalg.lstsq(A, y, rcond=None)
        r = np.abs(a * x + b - y)
        keep = r <= np.quantile(r, 0.8)
        x, y = x[keep], y[keep]
        if x.size < 50:
            break
    if not np.isfinite(a) or a <= 0:
        return prior
    return a * prior + b


def rigidity_residuals(
    K: np.ndarray,
    c2w: np.ndarray,
    i: int,
    neighbours: list[tuple[int, np.ndarray, np.ndarray]],
    prior_disparity: np.ndarray,
    depth_ratio: float = 2.0,
    iterations: int = 3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flow and depth residuals (pixels) of frame ``i`` against a static scene.

    Args:
        K: (3, 3) intrinsics at the flow's resolution (pixel centres at integers).
        c2w: (N, 4, 4) camera-to-world poses (OpenCV axes).
        i: the frame.
        neighbours: ``(j, flow_ij (H, W, 2) px, ok_ij (H, W) bool)`` per neighbour frame j, where
            ``ok`` marks flow that passed the forward-backward test.
        prior_disparity: (H, W) depth prior of frame i (inverse depth, any scale and shift: it is
            aligned to the triangulated disparity first).
        depth_ratio: disparities within this factor of the aligned prior count as agreeing.

    Returns:
        ``(flow_residual, depth_residual, valid)``: (H, W) float64 residuals, the worst over the
        trusted neighbours; ``valid`` (H, W) bool where at least one neighbour's flow is trusted
        (the residuals are 0 elsewhere).
    """
    h, w = prior_disparity.shape
    grid = pixel_grid(h, w)
    obs, trusted = [], []
    for j, flow, ok in neighbours:
        q, e = _transfer(K, c2w[i], c2w[j], grid)
        target = grid[..., :2] + flow
        # untrusted flow keeps a small weight so every pixel has a defined solution
        obs.append((q, e, target, np.where(ok, 1.0, 0.01)))
        trusted.append(ok)
    valid = np.any(trusted, axis=0)
    D0 = np.asarray(prior_disparity, np.float64)
    D = _solve_disparity(obs, np.maximum(D0, _EPS), iterations)
    r_flow = np.zeros((h, w))
    for (q, e, target, _), ok in zip(obs, trusted, strict=True):
        r = np.linalg.norm(target - _project(q, e, D), axis=-1)
        r_flow = np.where(ok, np.maximum(r_flow, r), r_flow)
    # align the prior to the triangulated disparity where the flow fits a static point well
    fits = valid & (r_flow <= np.quantile(r_flow[valid], 0.5)) if valid.any() else valid
    Da = align_prior(D0, D, fits)
    # an aligned prior can dip to or below zero where the fit extrapolates (far background of a
    # relative prior): floor it at its 1st percentile, and above zero
    positive = Da[Da > 0]
    floor = max(np.quantile(Da, 0.01), 0.05 * np.median(positive)) if positive.size else _EPS
    Da = np.maximum(Da, floor)
    lo, hi = Da / depth_ratio, Da * depth_ratio
    Dc = np.clip(D, np.minimum(lo, hi), np.maximum(lo, hi))
    r_depth = np.zeros((h, w))
    for (q, e, _, _), ok in zip(obs, trusted, strict=True):
        r = np.linalg.norm(_project(q, e, D) - _project(q, e, Dc), axis=-1)
        r_depth = np.where(ok, np.maximum(r_depth, r), r_depth)
    return r_flow, r_depth, valid


def segment_labels(rgb: np.ndarray, scale: float, min_size: int = 50) -> np.ndarray:
    """Felzenszwalb colour segments (H, W) int of an RGB uint8 frame (scikit-image)."""
    from skimage.segmentation import felzenszwalb

    return felzenszwalb(rgb, scale=scale, sigma=0.8, min_size=min_size)


def pool_segments(
    score: np.ndarray, valid: np.ndarray, labels: np.ndarray, min_valid: float = 0.2
) -> np.ndarray:
    """Median of ``score`` over the ``valid`` pixels of each segment, painted over the segment.

    Segments in which less than ``min_valid`` of the pixels are valid get 0 (no evidence)."""
    lab = labels.ravel()
    n = int(lab.max()) + 1
    v = valid.ravel()
    size = np.bincount(lab, minlength=n)
    nvalid = np.bincount(lab[v], minlength=n)
    order = np.argsort(lab[v], kind="stable")
    vals = score.ravel()[v][order]
    starts = np.concatenate([[0], np.cumsum(nvalid)[:-1]])
    med = np.zeros(n)
    for s in np.nonzero(nvalid >= np.maximum(1, min_valid * size))[0]:
        med[s] = np.median(vals[starts[s] : starts[s] + nvalid[s]])
    return med[labels]


def segment_adjacency(labels: np.ndarray) -> list[np.ndarray]:
    """Neighbours of every segment of ``labels`` (H, W) int in [0, n): a list of n int arrays
    (4-connectivity)."""
    a = np.concatenate([labels[:, 1:].ravel(), labels[1:, :].ravel()])
    b = np.concatenate([labels[:, :-1].ravel(), labels[:-1, :].ravel()])
    differ = a != b
    pairs = np.unique(np.stack([a[differ], b[differ]], 1), axis=0)
    pairs = np.concatenate([pairs, pairs[:, ::-1]])
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    n = int(labels.max()) + 1
    bounds = np.searchsorted(pairs[:, 0], np.arange(n + 1))
    return [np.unique(pairs[bounds[k] : bounds[k + 1], 1]) for k in range(n)]


def join_by_flow(
    raw: np.ndarray,
    static: np.ndarray,
    valid: np.ndarray,
    labels: np.ndarray,
    flows: list[np.ndarray],
    max_flow_px: float,
    min_area: float,
) -> np.ndarray:
    """Segments that move with a confident mover (H, W) bool, for a mask ``raw``.

    Seeded region growing (Adams and Bischof) over the adjacency graph of the colour segments
    ``labels``, with the segments' median flows as features. Seeds of the mover: segments
    mostly inside a connected component of ``raw`` of at least ``min_area`` (share of the
    frame; small components may be false positives, which must not grow). Seeds of the static
    scene: segments whose trusted (``valid``) pixels are mostly clearly static (``static``),
    and flat segments (under a fifth of their pixels trusted: their flow is interpolated, and
    smeared across a mover's edge). The unlabelled segment closest in flow to a labelled
    neighbour takes its label, nearest first, so an ambiguous segment goes to the side it moves
    with. It joins the mover only when its median flow differs by at most ``max_flow_px`` from
    the neighbour it is reached from (limbs swing, but a torso moves with the hips and head),
    and by at least ``max_flow_px`` more from every static-labelled neighbour.

    Args:
        raw: (H, W) bool confident motion mask.
        static: (H, W) bool pixels with clear static evidence (score far below threshold).
        valid: (H, W) bool pixels whose residuals are trusted (flow consistent, textured).
        labels: (H, W) int segments in [0, n).
        flows: (H, W, 2) flows (px) from this frame to its nearest neighbour frames.
        max_flow_px: largest median-flow difference (px) across which a segment joins, and the
            margin by which it must be closer to the mover than to the static scene.
        min_area: smallest mover component that seeds the growth, share of the frame.

    Returns:
        (H, W) bool: the pixels of the segments that joined (not those of ``raw``).
    """
    import heapq

    import cv2
    from scipy import ndimage

    lab = labels.ravel()
    n = int(lab.max()) + 1
    size = np.bincount(lab, minlength=n).astype(np.float64)
    min_px = min_area * raw.size
    count, comp, stats, _ = cv2.connectedComponentsWithStats(raw.astype(np.uint8), connectivity=8)
    big = np.zeros(count, bool)
    big[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_px
    in_seed = np.bincount(lab, weights=big[comp].ravel(), minlength=n) / np.maximum(size, 1)
    in_raw = np.bincount(lab, weights=raw.ravel(), minlength=n) / np.maximum(size, 1)
    n_valid = np.bincount(lab, weights=valid.ravel(), minlength=n)
    n_static = np.bincount(lab, weights=(valid & static).ravel(), minlength=n)
    evidence = n_valid >= np.maximum(1, 0.2 * size)
    label = np.full(n, -1)
    label[in_seed >= 0.5] = 1
    label[(label < 0) & (in_raw >= 0.5)] = 0  # small components: kept in raw, but no seeds
    # flat segments (too few trusted pixels) stay static: their flow is interpolated from
    # their surroundings (near a mover, smeared across its edge) and says nothing on its own
    label[(label < 0) & (~evidence | (n_static >= 0.5 * n_valid))] = 0
    if not (label == 1).any() or not (label < 0).any():
        return np.zeros(raw.shape, bool)
    index = np.arange(n)
    feature = np.stack(
        [ndimage.median(f[..., c], labels, index) for f in flows for c in range(2)], 1
    )
    neighbours = segment_adjacency(labels)

    def distance(s: int, t: int) -> float:
        return float(np.linalg.norm(feature[s] - feature[t]))

    heap = [
        (distance(s, t), int(s), int(label[t]))
        for s in np.nonzero(label < 0)[0]
        for t in neighbours[s]
        if label[t] >= 0
    ]
    heapq.heapify(heap)
    joined = np.zeros(n, bool)
    while heap:
        d, s, side = heapq.heappop(heap)
        if label[s] >= 0:
            continue
        if side == 1:
            # it must move with the mover, and clearly not with the static scene next to it:
            # a false-positive seed (static, its flow like its surroundings') does not grow
            d_static = min((distance(s, t) for t in neighbours[s] if label[t] == 0), default=np.inf)
            side = int(d <= max_flow_px and d_static >= d + max_flow_px)
        label[s] = side
        joined[s] = side == 1
        for t in neighbours[s]:
            if label[t] < 0:
                heapq.heappush(heap, (distance(t, s), int(t), int(label[s])))
    return joined[labels]


def warp_to(field: np.ndarray, flow: np.ndarray, nearest: bool = False) -> np.ndarray:
    """Sample ``field`` (H, W[, C]) of frame j at ``p + flow(p)`` for every pixel p of frame i
    (``flow``: i -> j, pixels); outside the image samples are 0."""
    import cv2

    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(
        np.asarray(field, np.float32),
        gx + flow[..., 0].astype(np.float32),
        gy + flow[..., 1].astype(np.float32),
        cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )


def chain_flow(
    flow_ab: np.ndarray, ok_ab: np.ndarray, flow_bc: np.ndarray, ok_bc: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Flow a -> c through b: ``f_ab(p) + f_bc(p + f_ab(p))``, trusted where both steps are."""
    f = flow_ab + warp_to(flow_bc, flow_ab)
    ok = ok_ab & (warp_to(ok_bc.astype(np.float32), flow_ab, nearest=True) > 0.5)
    return f, ok


def frame_motion_mask(
    rgb: np.ndarray,
    K: np.ndarray,
    c2w: np.ndarray,
    i: int,
    neighbours: list[tuple[int, np.ndarray, np.ndarray]],
    prior_disparity: np.ndarray,
    cfg,
) -> tuple[np.ndarray, float]:
    """Raw motion mask (H, W) bool of frame ``i`` and its median flow residual (px).

    The score of a pixel is the larger of its flow residual over ``cfg.rigidity_threshold`` and
    its depth residual over ``cfg.rigidity_depth_threshold``, divided by the frame's noise level
    (``cfg.rigidity_noise_factor`` x the median score of the trusted pixels, when above 1: a
    frame whose flow or pose is worse than usual needs stronger evidence). Scores are pooled
    over colour segments (median of the trusted pixels; ``cfg.segment_scale`` 0 = per pixel),
    then thresholded with hysteresis: pixels >= 1, grown through pixels >=
    ``cfg.hysteresis_low``. With ``cfg.join_flow_px`` > 0, segments that move with a confident
    mover join it (:func:`join_by_flow`, flows to the frames next to ``i``). Pixels with clear
    static evidence (score below ``STATIC_SHARE`` x the hysteresis floor) stay static.
    """
    from skimage.filters import apply_hysteresis_threshold

    r_flow, r_depth, valid = rigidity_residuals(
        K, c2w, i, neighbours, prior_disparity, cfg.rigidity_depth_ratio
    )
    if cfg.min_texture > 0:
        # flat pixels (sky, walls) and single edges (stripes: the aperture problem) have flow
        # that says nothing about motion: they do not vote
        from .flow_ops import textured

        valid = valid & textured(rgb, cfg.min_texture)
    score = np.maximum(r_flow / cfg.rigidity_threshold, r_depth / cfg.rigidity_depth_threshold)
    median = float(np.median(score[valid])) if valid.any() else 0.0
    score = score / max(1.0, cfg.rigidity_noise_factor * median)
    pixel = np.where(valid, score, 0.0)
    labels = None
    if cfg.segment_scale > 0:
        labels = segment_labels(rgb, cfg.segment_scale)
        score = pool_segments(score, valid, labels)
    else:
        score = pixel
    low = min(cfg.hysteresis_low, 1.0)
    raw = apply_hysteresis_threshold(score, low, 1.0) if low < 1.0 else score >= 1.0
    static = valid & (pixel < STATIC_SHARE * low)
    if labels is not None:
        # a segment that leaks from a mover into the static scene (same colour, e.g. a car and
        # its track) keeps only its pixels without clear static evidence
        raw &= ~static
        nearest = [f for j, f, _ in neighbours if abs(j - i) == 1]
        if cfg.join_flow_px > 0 and nearest:
            joined = join_by_flow(
                raw,
                valid & (pixel < cfg.join_static_score),
                valid,
                labels,
                nearest,
                cfg.join_flow_px,
                cfg.join_min_area,
            )
            raw |= joined & ~static
    median_flow = float(np.median(r_flow[valid])) if valid.any() else float("nan")
    return raw, median_flow

"""Operations on dense optical-flow fields that the flow backends and the motion masks share.

A flow field is an (H, W, 2) float array in pixels: ``flow[y, x] = (u, v)`` moves the pixel
centred at (x, y) of one frame to (x + u, y + v) of another. These functions are numpy/OpenCV
only and import no other module of the package, so the flow stage (:mod:`.flow`), its RAFT
backend (:mod:`.raft`), the motion masks (:mod:`.masks`, :mod:`.rigidity`) and the benchmarks
can all use them without importing each other.
"""

from __future__ import annotations

import numpy as np


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


def resize_flow(flow: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Resize a flow field (H, W, 2) in pixels to ``out_hw = (H', W')``, scaling the vectors.

    Both grids put pixel centres at integers and the image edges at -0.5 and W - 0.5, so output
    pixel x' sits at input coordinate ``(x' + 0.5) W / W' - 0.5`` (cv2.resize's mapping) and a
    displacement scales exactly by W'/W: u is multiplied by W'/W and v by H'/H. Bilinear
    interpolation (as the raft backend's resize): an affine field comes out exactly affine,
    except the outermost pixels when enlarging, which replicate the border. (INTER_AREA would
    shift the samples by up to 1/12 input pixel at non-integer factors, and measured no better.)
    Example: a constant (3, 2) at 100 x 50 (W x H) becomes (1.5, 1) at 50 x 25.
    Returns (H', W', 2) float32.
    """
    import cv2

    h, w = flow.shape[:2]
    oh, ow = (int(v) for v in out_hw)
    if (oh, ow) == (h, w):
        return np.array(flow, dtype=np.float32)
    out = cv2.resize(flow.astype(np.float32), (ow, oh), interpolation=cv2.INTER_LINEAR)
    out[..., 0] *= ow / w
    out[..., 1] *= oh / h
    return out


def fill_inconsistent(
    flow: np.ndarray,
    ok: np.ndarray,
    guide: np.ndarray,
    radius: int = 16,
    sigma_colour: float = 12.0,
    iterations: int = 2,
) -> np.ndarray:
    """Replace the flow at pixels where ``ok`` is False by a weighted mean of ok neighbours.

    A joint (cross) bilateral fill: pixel p takes ``sum_q w_q f(q) / sum_q w_q`` over the ok
    pixels q within ``radius`` px, sampled every ``max(1, radius // 4)`` px, with
    ``w_q = exp(-|I(p) - I(q)|^2 / (2 sigma_colour^2) - |p - q|^2 / (2 (radius / 2)^2))`` and I
    the ``guide`` image. Occluded pixels and the halo DIS smears around a moving object's edge
    thus take the flow of the nearby surface of their own colour. ``iterations`` passes: pixels
    filled in one pass count as ok in the next, which reaches further into large holes; a pixel
    without an ok pixel in reach keeps its flow. (OpenCV's joint bilateral filter lives in the
    contrib package, which the workflow does not install.)

    Args:
        flow: (H, W, 2) flow in pixels.
        ok: (H, W) bool, True where the flow is trusted (e.g. :func:`consistency_mask`).
        guide: (H, W) or (H, W, C) image of the flow's source frame (uint8 RGB: sigma_colour
            is in its units).
        radius: reach in pixels (>= 1).
    Returns:
        (H, W, 2) float32; equal to ``flow`` wherever ``ok``.
    """
    h, w = ok.shape
    r = max(1, int(radius))
    step = max(1, r // 4)
    g = guide.astype(np.float32).reshape(h, w, -1)
    # pad by the radius (flow 0, not ok) so every neighbour index is valid: out-of-image
    # neighbours then simply carry no weight
    wp = w + 2 * r
    g = np.pad(g, ((r, r), (r, r), (0, 0)), mode="edge").reshape(-1, g.shape[2])
    f = np.pad(flow.astype(np.float32), ((r, r), (r, r), (0, 0))).reshape(-1, 2)
    valid = np.pad(np.asarray(ok, bool), r).reshape(-1)
    offsets = [
        (dy, dx)
        for dy in range(-(r // step) * step, r + 1, step)
        for dx in range(-(r // step) * step, r + 1, step)
        if 0 < dy * dy + dx * dx <= r * r
    ]
    shifts = [dy * wp + dx for dy, dx in offsets]
    spatial = [(dy * dy + dx * dx) / (2 * (r / 2) ** 2) for dy, dx in offsets]
    inv_2c2 = 1.0 / (2 * float(sigma_colour) ** 2)
    for _ in range(iterations):
        ys, xs = np.nonzero(~valid.reshape(h + 2 * r, wp)[r:-r, r:-r])
        if ys.size == 0:
            break
        p = (ys + r) * wp + (xs + r)
        colour = g[p]
        acc = np.zeros((p.size, 2), np.float32)
        total = np.zeros(p.size, np.float32)
        for shift, sp in zip(shifts, spatial, strict=True):
            q = p + shift
            wq = np.exp(-(np.square(g[q] - colour).sum(axis=1) * inv_2c2 + sp)) * valid[q]
            acc += wq[:, None] * f[q]
            total += wq
        # 1e-6: at least one neighbour of similar colour or nearby; else keep the DIS flow
        done = total > 1e-6
        f[p[done]] = acc[done] / total[done, None]
        valid[p[done]] = True
    return f.reshape(h + 2 * r, wp, 2)[r:-r, r:-r].copy()


def textured(rgb: np.ndarray, min_texture: float) -> np.ndarray:
    """Pixels (H, W) bool where optical flow is determined in both directions.

    The test is the smaller eigenvalue of the 7x7 structure tensor of the grey image (intensity
    in [0, 1]) against ``min_texture``: flat regions (sky, walls) and single edges (stripes, the
    aperture problem) have a small one, and their flow says nothing about motion.
    """
    import cv2

    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    return cv2.cornerMinEigenVal(grey, 7, 3) >= min_texture

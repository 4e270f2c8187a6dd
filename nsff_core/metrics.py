"""Quality measures of the priors against ground truth (flow, masks, depth, poses).

Image-quality metrics for rendered views (PSNR, SSIM, LPIPS) join this module with training.
Pose error after similarity alignment lives in :func:`nsff_core.cameras.pose_error`.
"""

from __future__ import annotations

import numpy as np


def end_point_error(
    flow: np.ndarray, flow_gt: np.ndarray, valid: np.ndarray | None = None
) -> float:
    """Mean end-point error (pixels) of (H, W, 2) flows, over ``valid`` pixels if given."""
    err = np.linalg.norm(np.asarray(flow, np.float64) - flow_gt, axis=-1)
    return float(err[valid].mean() if valid is not None else err.mean())


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def spearman(a: np.ndarray, b: np.ndarray, valid: np.ndarray | None = None) -> float:
    """Spearman rank correlation of two maps over ``valid`` pixels (scale-free depth check)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if valid is not None:
        a, b = a[valid.ravel()], b[valid.ravel()]
    return float(spearmanr(a, b).statistic)

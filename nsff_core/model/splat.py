"""Forward (softmax) splatting in plain torch, for NSFF time interpolation (:mod:`.interp`).

Follows the definition of Niklaus and Liu, "Softmax Splatting for Video Frame Interpolation"
(CVPR 2020), written here with ``index_add`` instead of a CUDA kernel, so it runs on any device
and is differentiable with respect to the values, the flow, the weights and the metric.

Pixel convention: the centre of pixel (row r, column c) is at (x, y) = (c, r) (OpenCV, as in
:mod:`nsff_core.model.cameras`); ``flow[:, 0]`` is the x (column) and ``flow[:, 1]`` the y (row)
displacement, in pixels. Each source pixel p lands at q = p + flow(p) and is shared between
the four pixels around q with bilinear weights

    b(q, j) = max(0, 1 - |q_x - j_x|) * max(0, 1 - |q_y - j_y|).

Targets outside the image are dropped (their share is lost, not clamped to the border).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

SplatMode = Literal["average", "softmax"]


def _bilinear_targets(flow: Tensor) -> tuple[Tensor, Tensor]:
    """Flattened target indices and bilinear weights of every source pixel's 4 corners.

    Args:
        flow: (B, 2, H, W) displacement in pixels.

    Returns:
        index: (B, 4, H, W) int64 index into a flattened (B * H * W) target image; 0 for
            dropped corners.
        weight: (B, 4, H, W) bilinear weight; 0 for corners outside the image or with a
            non-finite flow.
    """
    b, _, h, w = flow.shape
    gy, gx = torch.meshgrid(
        torch.arange(h, device=flow.device, dtype=flow.dtype),
        torch.arange(w, device=flow.device, dtype=flow.dtype),
        indexing="ij",
    )
    qx = gx + flow[:, 0]  # (B, H, W)
    qy = gy + flow[:, 1]
    x0 = torch.floor(qx).detach()
    y0 = torch.floor(qy).detach()
    fx = qx - x0  # in [0, 1), differentiable wrt the flow
    fy = qy - y0
    batch_offset = (torch.arange(b, device=flow.device) * (h * w)).view(b, 1, 1)

    indices, weights = [], []
    for dy in (0, 1):
        for dx in (0, 1):
            cx = x0 + dx
            cy = y0 + dy
            inside = (cx >= 0) & (cx <= w - 1) & (cy >= 0) & (cy <= h - 1)  # False for NaN
            wx = fx if dx else 1 - fx
            wy = fy if dy else 1 - fy
            weights.append(torch.where(inside, wx * wy, torch.zeros_like(fx)))
            flat = torch.where(inside, cy * w + cx, torch.zeros_like(cx)).long()
            indices.append(flat + batch_offset)
    return torch.stack(indices, dim=1), torch.stack(weights, dim=1)


def splat_sum(values: Tensor, flow: Tensor) -> Tensor:
    """Summation splatting: ``out(j) = sum_p b(p + flow(p), j) values(p)``.

    Args:
        values: (B, C, H, W) per-source-pixel values.
        flow: (B, 2, H, W) displacement in pixels.

    Returns (B, C, H, W). Splatting ones gives the coverage (sum of landed bilinear weights).
    """
    index, weight = _bilinear_targets(flow)
    return _scatter(values.unsqueeze(1) * weight.unsqueeze(2).to(values.dtype), index)


def _scatter(contrib: Tensor, index: Tensor) -> Tensor:
    """Sum ``contrib`` (B, 4, C, H, W) into a (B, C, H, W) image at ``index`` (B, 4, H, W)."""
    b, _, c, h, w = contrib.shape
    src = contrib.permute(0, 1, 3, 4, 2).reshape(-1, c)  # (B*4*H*W, C), channels last
    out = contrib.new_zeros(b * h * w, c).index_add(0, index.reshape(-1), src)
    return out.view(b, h, w, c).permute(0, 3, 1, 2)


def splat(
    values: Tensor,
    flow: Tensor,
    weights: Tensor | None = None,
    mode: SplatMode = "average",
    metric: Tensor | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """Normalised forward splatting of ``values`` along ``flow``.

    Each source pixel p carries an importance ``u(p) = weights(p)`` (1 if None), times
    ``exp(metric(p))`` in softmax mode. With the bilinear shares ``b`` (module docstring),

        num(j) = sum_p b(p + flow(p), j) u(p) values(p)
        den(j) = sum_p b(p + flow(p), j) u(p)
        out(j) = num(j) / den(j)  if den(j) > eps,  else 0  (nothing landed).

    ``"average"`` is softmax splatting's average mode (used by NSFF interpolation, weights
    None); with ``weights`` it is the "linear" mode. ``"softmax"`` needs ``metric`` (e.g.
    ``-alpha * depth`` so that nearer sources win). Numerically, exp(metric) is shifted at each
    target by the largest metric landing there (with a positive share), which cancels in
    num / den but keeps exp() from overflowing and keeps den >= that source's share.

    Args:
        values: (B, C, H, W) source values (e.g. rgb and alpha of one sample plane at time t).
        flow: (B, 2, H, W) forward displacement in pixels, x then y.
        weights: optional (B, 1, H, W) non-negative importance per source pixel.
        mode: ``"average"`` or ``"softmax"``.
        metric: (B, 1, H, W) log-importance, required by (and only allowed in) softmax mode.
        eps: ``den`` at or below this counts as nothing landed.

    Returns (B, C, H, W) splatted values at the target time.

    Example: an integer flow (1, 0) moves every pixel exactly one column to the right; the
    first column receives nothing (0) and the last column's values leave the image.
    """
    if values.dim() != 4 or flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(
            f"need values (B,C,H,W) and flow (B,2,H,W), got {values.shape}, {flow.shape}"
        )
    if flow.shape[0] != values.shape[0] or flow.shape[2:] != values.shape[2:]:
        raise ValueError(f"values {tuple(values.shape)} and flow {tuple(flow.shape)} differ")
    if mode not in ("average", "softmax"):
        raise ValueError(f"mode must be 'average' or 'softmax', got {mode!r}")
    if (metric is not None) != (mode == "softmax"):
        raise ValueError("metric is required in softmax mode and not used otherwise")

    index, share = _bilinear_targets(flow)
    share = share.to(values.dtype)
    if weights is not None:
        share = share * weights.to(values.dtype)  # (B, 4, H, W) by broadcasting (B, 1, H, W)
    if metric is not None:
        m = metric.to(values.dtype).expand_as(share)  # (B, 4, H, W)
        lands = share.detach() > 0
        peak = torch.full(
            (index.numel() // 4,), float("-inf"), dtype=values.dtype, device=values.device
        )
        peak = peak.scatter_reduce(
            0,
            index.reshape(-1),
            torch.where(lands, m.detach(), float("-inf")).reshape(-1),
            reduce="amax",
        )
        shifted = torch.where(lands, m - peak[index], float("-inf"))
        share = share * torch.exp(shifted)

    contrib = torch.cat([values.unsqueeze(1) * share.unsqueeze(2), share.unsqueeze(2)], dim=2)
    summed = _scatter(contrib, index)  # (B, C + 1, H, W)
    num, den = summed[:, :-1], summed[:, -1:]
    landed = den > eps
    return torch.where(landed, num / torch.where(landed, den, torch.ones_like(den)), 0.0)

"""Quality measures of the priors against ground truth (flow, masks, depth, poses).

Image-quality metrics for rendered views (PSNR, SSIM, LPIPS) join this module with training.
Pose error after similarity alignment lives in :func:`nsff_core.model.cameras.pose_error`.
"""

from __future__ import annotations

import math
import os

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


# ---------------------------------------------------------------------------------------------
# Image quality of rendered views: PSNR, SSIM, LPIPS.
#
# torch (and torchvision for LPIPS) is imported inside the functions so that importing this
# module stays cheap for the prior-stage rules that only need the numpy measures above.
# Images are channel-last float arrays or tensors in [0, 1]: (H, W, C) or (B, H, W, C).
# ---------------------------------------------------------------------------------------------

#: LPIPS v0.1 scaling layer, applied to inputs already mapped to [-1, 1] (lpips/pretrained_networks).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
#: Output channels of the five AlexNet ReLU layers LPIPS compares (relu1 .. relu5).
LPIPS_ALEX_CHANNELS = (64, 192, 384, 256, 256)
#: Where each LPIPS slice ends in ``torchvision.models.alexnet().features`` (exclusive).
LPIPS_ALEX_SLICES = (2, 5, 8, 10, 12)
#: Local file names searched for the two weight sets (never downloaded).
LPIPS_BACKBONE_FILES = ("alexnet-owt-7be5be79.pth", "alexnet.pth")
LPIPS_LINEAR_FILES = ("lpips_alex_v0.1.pth", "alex.pth")
#: Environment variable naming the local directory that holds pretrained weights.
WEIGHTS_DIR_ENV = "NSFF_WEIGHTS_DIR"

_LPIPS_CACHE: dict = {}


class LpipsUnavailable(RuntimeError):
    """The LPIPS weights (AlexNet backbone and/or LPIPS linear layers) are not on disk."""


def _images(pred, target):
    """Both images as float64 tensors of shape (B, H, W, C) on ``pred``'s device."""
    import torch

    p = torch.as_tensor(pred)
    t = torch.as_tensor(target, device=p.device)
    if p.shape != t.shape:
        raise ValueError(f"pred {tuple(p.shape)} and target {tuple(t.shape)} differ in shape")
    if p.ndim == 3:
        p, t = p[None], t[None]
    if p.ndim != 4:
        raise ValueError(f"expected (H, W, C) or (B, H, W, C) images, got {tuple(p.shape)}")
    return p.double(), t.double()


def _ndim(x) -> int:
    """Number of dimensions of an array, tensor or nested list (without copying tensors)."""
    return x.ndim if hasattr(x, "ndim") else np.ndim(x)


def _mask(mask, shape, device):
    """A bool mask broadcast to (B, H, W) from (H, W) or (B, H, W); None stays None."""
    import torch

    if mask is None:
        return None
    m = torch.as_tensor(mask, device=device).bool()
    if m.ndim == 2:
        m = m[None]
    if m.shape[-2:] != tuple(shape[1:3]) or m.ndim != 3:
        raise ValueError(f"mask {tuple(m.shape)} does not match images {tuple(shape)}")
    return m.expand(shape[0], -1, -1)


def psnr(pred, target, mask=None) -> float:
    """Peak signal-to-noise ratio in dB, ``-10 log10(MSE)`` for images in [0, 1] (peak 1).

    Args:
        pred, target: (H, W, C) or (B, H, W, C) arrays/tensors in [0, 1]. A batch is pooled:
            one MSE over all its pixels.
        mask: optional bool (H, W) or (B, H, W); the MSE then averages only the masked pixels
            (all channels).
    Returns:
        PSNR in dB; ``inf`` for identical images, ``nan`` when the mask is empty.
    """
    p, t = _images(pred, target)
    m = _mask(mask, p.shape, p.device)
    err = (p - t) ** 2
    if m is not None:
        if not bool(m.any()):
            return float("nan")
        err = err[m]
    mse = float(err.mean())
    return -10.0 * math.log10(mse) if mse > 0 else float("inf")


def _gaussian_kernel(window: int, sigma: float, dtype, device):
    """Normalised 1-D Gaussian of ``window`` taps (odd), as scipy.ndimage builds it."""
    import torch

    if window % 2 != 1 or window < 1:
        raise ValueError(f"SSIM window must be an odd positive size, got {window}")
    x = torch.arange(window, dtype=dtype, device=device) - window // 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def _ssim_maps(p, t, window: int, sigma: float, k1: float, k2: float, same: bool):
    """Per-channel SSIM maps (B, C, H', W') of (B, H, W, C) float64 tensors, data range 1.

    ``same=True`` pads symmetrically (scipy ``mode='reflect'``: ``d c b a | a b c d``) so
    the map has size (H, W); ``same=False`` keeps only the valid region (H - 2r, W - 2r),
    r = window // 2, which does not depend on the padding.
    """
    import torch
    import torch.nn.functional as F

    b, h, w, c = p.shape
    r = window // 2
    if h <= 2 * r or w <= 2 * r:
        raise ValueError(f"images {h}x{w} are too small for a {window}x{window} SSIM window")
    x = p.permute(0, 3, 1, 2).reshape(b * c, 1, h, w)
    y = t.permute(0, 3, 1, 2).reshape(b * c, 1, h, w)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (B*C, 5, H, W)
    if same:
        stack = torch.cat([stack[..., :r].flip(-1), stack, stack[..., -r:].flip(-1)], dim=-1)
        stack = torch.cat([stack[..., :r, :].flip(-2), stack, stack[..., -r:, :].flip(-2)], -2)
    g = _gaussian_kernel(window, sigma, stack.dtype, stack.device)
    stack = F.conv2d(stack, g.view(1, 1, window, 1).expand(5, 1, window, 1), groups=5)
    stack = F.conv2d(stack, g.view(1, 1, 1, window).expand(5, 1, 1, window), groups=5)
    ux, uy, uxx, uyy, uxy = stack.unbind(1)
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    c1, c2 = k1**2, k2**2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.reshape(b, c, *s.shape[-2:])


def ssim_map(
    pred, target, window: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03
):
    """Full-size SSIM map, mean over channels (e.g. for SSIM-driven hard ray sampling).

    Same statistics as :func:`ssim`; borders use symmetric padding (scipy ``mode='reflect'``,
    which is what ``skimage.metrics.structural_similarity(..., full=True)`` returns).

    Args:
        pred, target: (H, W, C) or (B, H, W, C) in [0, 1].
    Returns:
        float32 torch tensor (H, W), or (B, H, W) for batched input, values in [-1, 1].
    """
    p, t = _images(pred, target)
    out = _ssim_maps(p, t, window, sigma, k1, k2, same=True).mean(1).float()
    return out[0] if _ndim(pred) == 3 else out


def ssim(
    pred,
    target,
    mask=None,
    window: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    """Structural similarity (Wang et al. 2004), the real SSIM in [-1, 1] (not (1 + SSIM) / 2).

    Convention: ``skimage.metrics.structural_similarity(pred, target, channel_axis=-1,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``:
    per channel, local means/variances/covariance from an 11x11 Gaussian window (sigma 1.5,
    population statistics), ``C1 = (k1 * 1)^2``, ``C2 = (k2 * 1)^2``; the SSIM map is averaged
    over the valid region (``window // 2`` pixels cropped at each border) and then over channels.
    nsff_pl instead reported ``1 - kornia.ssim_loss = (1 + SSIM) / 2`` (kornia's loss is
    ``(1 - SSIM) / 2``).

    Args:
        pred, target: (H, W, C) or (B, H, W, C) in [0, 1]; H, W > ``window - 1``.
        mask: optional bool (H, W) or (B, H, W). Then the full-size (symmetric-padded) map of
            :func:`ssim_map` is averaged over the masked pixels, like the original NSFF
            evaluation (``full=True`` map, masked mean); border pixels count here.
    Returns:
        Mean SSIM (batch pooled); ``nan`` when the mask is empty.
    """
    p, t = _images(pred, target)
    m = _mask(mask, p.shape, p.device)
    if m is None:
        return float(_ssim_maps(p, t, window, sigma, k1, k2, same=False).mean())
    if not bool(m.any()):
        return float("nan")
    s = _ssim_maps(p, t, window, sigma, k1, k2, same=True).mean(1)  # (B, H, W)
    return float(s[m].mean())


# ------------------------------------------ LPIPS --------------------------------------------


def _alexnet_features():
    """``torchvision.models.alexnet().features[:12]`` (conv1 .. relu5), built directly.

    Same layers and indices as torchvision, so its ``features.*`` weights load unchanged, but
    without constructing (and randomly initialising) the 57M-parameter classifier.
    """
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
    )


def _lpips_class():
    """The LPIPS(AlexNet, v0.1) module class, defined lazily so torch is not imported early."""
    cls = _LPIPS_CACHE.get("class")
    if cls is not None:
        return cls
    import torch
    from torch import nn

    class LpipsAlex(nn.Module):
        """LPIPS v0.1 with an AlexNet backbone; forward takes NCHW images in [-1, 1].

        ``forward(x0, x1, spatial=False)`` returns (N, 1, 1, 1) distances, or (N, 1, H, W)
        per-pixel maps (each layer's map bilinearly upsampled to the input size) if spatial.
        Parameter names match the ``lpips`` package so its ``alex.pth`` loads directly
        (``lin0.model.1.weight`` ... ``lin4.model.1.weight``); the backbone lives under
        ``net`` with torchvision ``features`` indices.
        """

        def __init__(self):
            super().__init__()
            self.net = _alexnet_features()
            for k, ch in enumerate(LPIPS_ALEX_CHANNELS):
                lin = nn.Module()  # lpips.NetLinLayer: .model = Sequential(Dropout, Conv2d)
                lin.model = nn.Sequential(nn.Dropout(), nn.Conv2d(ch, 1, 1, bias=False))
                self.add_module(f"lin{k}", lin)
            shift = torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1)
            scale = torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1)
            self.register_buffer("shift", shift, persistent=False)
            self.register_buffer("scale", scale, persistent=False)
            self.eval()
            self.requires_grad_(False)

        def features(self, x):
            x = (x - self.shift) / self.scale
            feats, start = [], 0
            for end in LPIPS_ALEX_SLICES:
                x = self.net[start:end](x)
                feats.append(x)
                start = end
            return feats

        def forward(self, x0, x1, spatial: bool = False):
            out = 0
            for k, (f0, f1) in enumerate(zip(self.features(x0), self.features(x1), strict=True)):
                f0 = f0 / (torch.sqrt((f0 * f0).sum(1, keepdim=True)) + 1e-10)
                f1 = f1 / (torch.sqrt((f1 * f1).sum(1, keepdim=True)) + 1e-10)
                d = getattr(self, f"lin{k}").model((f0 - f1) ** 2)  # (N, 1, h, w)
                if spatial:
                    d = nn.functional.interpolate(
                        d, size=x0.shape[-2:], mode="bilinear", align_corners=False
                    )
                else:
                    d = d.mean((2, 3), keepdim=True)
                out = out + d
            return out

    _LPIPS_CACHE["class"] = LpipsAlex
    return LpipsAlex


def build_lpips(alexnet_state=None, linear_state=None, random_init: bool = False, seed: int = 0):
    """Build the LPIPS(AlexNet) module from in-memory state dicts.

    Args:
        alexnet_state: torchvision AlexNet state dict (``features.*`` keys are used; the bare
            ``features`` sub-module keys ``0.weight`` ... also work).
        linear_state: LPIPS v0.1 ``alex.pth`` state dict (``lin{k}.model.1.weight``; the
            ``lins.{k}.model.1.weight`` spelling is accepted too).
        random_init: fill whatever state is missing with seeded random weights (linear weights
            non-negative, as trained LPIPS weights are). Only for tests of the computation:
            the number is NOT the LPIPS metric.
        seed: seed of the random initialisation.
    Returns:
        An eval-mode ``nn.Module``; see its ``forward`` docstring.
    """
    import torch

    if not random_init and (alexnet_state is None or linear_state is None):
        raise ValueError("build_lpips needs both state dicts unless random_init=True")
    model = _lpips_class()()
    gen = torch.Generator().manual_seed(seed)
    if alexnet_state is None:
        for mod in model.net:
            if isinstance(mod, torch.nn.Conv2d):
                fan_in = mod.weight[0].numel()
                mod.weight.copy_(
                    torch.randn(mod.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5
                )
                mod.bias.zero_()
    else:
        sd = {
            k.removeprefix("features."): v
            for k, v in alexnet_state.items()
            if not k.startswith("classifier.")
        }
        model.net.load_state_dict(sd, strict=True)
    if linear_state is None:
        for k in range(len(LPIPS_ALEX_CHANNELS)):
            conv = getattr(model, f"lin{k}").model[1]
            conv.weight.copy_(torch.rand(conv.weight.shape, generator=gen) / conv.in_channels)
    else:
        sd = {}
        for key, v in linear_state.items():
            if key.startswith("lins."):
                key = "lin" + key[len("lins.") :]
            if key.startswith("lin"):
                sd[key] = v
        need = [f"lin{k}.model.1.weight" for k in range(len(LPIPS_ALEX_CHANNELS))]
        missing = [k for k in need if k not in sd]
        if missing:
            raise ValueError(f"LPIPS linear state lacks {missing}")
        model.load_state_dict({**model.state_dict(), **sd}, strict=True)
    return model


def _find(dirs, names):
    for d in dirs:
        for n in names:
            path = os.path.join(d, n)
            if os.path.isfile(path):
                return path
    return None


def lpips_weight_files(net: str = "alex", weights_path=None) -> tuple[str, str]:
    """Locate the local AlexNet backbone and LPIPS linear weight files (never downloads).

    Searched directories, in order: ``weights_path`` (a directory, or a linear-weights file
    whose directory is then searched for the backbone), ``$NSFF_WEIGHTS_DIR`` and its
    ``lpips/`` sub-directory, and torch hub's ``checkpoints`` cache (backbone only: where
    torchvision would have cached it). File names: backbone ``alexnet-owt-7be5be79.pth`` or
    ``alexnet.pth``; linear ``lpips_alex_v0.1.pth`` or ``alex.pth`` (the lpips package's
    ``lpips/weights/v0.1/alex.pth``).

    Returns:
        (backbone_path, linear_path).
    Raises:
        LpipsUnavailable: naming the files not found and where they were looked for.
        ValueError: for a ``net`` other than ``"alex"``.
    """
    if net != "alex":
        raise ValueError(f"only the AlexNet LPIPS is implemented, got net={net!r}")
    dirs, linear_file = [], None
    if weights_path is not None:
        wp = os.fspath(weights_path)
        if os.path.isfile(wp):
            linear_file, wp = wp, os.path.dirname(wp)
        dirs += [wp, os.path.join(wp, "lpips")]
    env = os.environ.get(WEIGHTS_DIR_ENV)
    if env:
        dirs += [env, os.path.join(env, "lpips")]
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch"
    )
    backbone = _find(dirs + [os.path.join(torch_home, "hub", "checkpoints")], LPIPS_BACKBONE_FILES)
    linear = linear_file or _find(dirs, LPIPS_LINEAR_FILES)
    missing = []
    if backbone is None:
        missing.append(f"AlexNet backbone ({' or '.join(LPIPS_BACKBONE_FILES)})")
    if linear is None:
        missing.append(f"LPIPS v0.1 linear layers ({' or '.join(LPIPS_LINEAR_FILES)})")
    if missing:
        where = ", ".join(dirs) if dirs else f"no directory (set ${WEIGHTS_DIR_ENV})"
        raise LpipsUnavailable(
            f"LPIPS unavailable: missing {'; '.join(missing)}. Looked in: {where}"
            f"{'' if backbone else ', ' + os.path.join(torch_home, 'hub', 'checkpoints')}. "
            f"This search never downloads: place the files in ${WEIGHTS_DIR_ENV} or pass "
            "weights_path (in the workflow, config eval.lpips_fetch: true lets rule "
            "weights_evaluate download them)."
        )
    return backbone, linear


def lpips(pred, target, mask=None, *, model) -> float:
    """LPIPS v0.1 distance (AlexNet) between two images in [0, 1]; lower is more similar.

    Inputs are mapped to [-1, 1], shifted/scaled by LPIPS's scaling layer, passed through the
    AlexNet relu1..relu5 features, unit-normalised along channels, squared-differenced,
    weighted by the learned 1x1 linear layers, spatially averaged and summed over layers.

    Args:
        pred, target: (H, W, 3) or (B, H, W, 3) in [0, 1]; B > 1 gives the batch mean.
        mask: optional bool (H, W) or (B, H, W): the spatial LPIPS map (layer maps upsampled
            bilinearly to H x W, summed) is averaged over the masked pixels (nsff_pl's
            "dynamic only" LPIPS).
        model: the LPIPS module: :func:`build_lpips`, or the pretrained one from verified local
            files (:func:`nsff_core.workflow.stages.evaluate.load_lpips`; this library reads no
            weight files itself).
    Returns:
        LPIPS (>= 0 with trained weights); ``nan`` when the mask is empty.
    """
    import torch

    p, t = _images(pred, target)
    m = _mask(mask, p.shape, p.device)
    if m is not None and not bool(m.any()):
        return float("nan")
    dtype = next(model.parameters()).dtype
    x0 = (p.permute(0, 3, 1, 2) * 2 - 1).to(dtype)
    x1 = (t.permute(0, 3, 1, 2) * 2 - 1).to(dtype)
    with torch.no_grad():
        if m is None:
            return float(model(x0, x1).mean())
        d = model(x0, x1, spatial=True)[:, 0]  # (B, H, W)
        return float(d[m].mean())

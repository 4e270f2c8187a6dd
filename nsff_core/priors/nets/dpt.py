"""DPT monocular depth (Ranftl et al., ICCV 2021): the pretrained backend of the ``depth`` stage.

Two networks, both on timm backbones and laid out so that the official MiDaS-trained checkpoints
load with ``strict=True`` (their parameter names are this module's ``state_dict`` keys exactly):

- ``dpt_large``: ViT-L/16 at 384 (timm ``vit_large_patch16_384``), tokens of blocks 5, 11, 17, 23
  reassembled at strides 4, 8, 16, 32; checkpoint ``dpt_large-midas-2f21e586.pt``;
- ``dpt_hybrid``: ViT-B/16 on a ResNet-50 stem (timm ``vit_base_r50_s16_384``); the two first
  ResNet stages give the stride 4 and 8 maps, blocks 8 and 11 the stride 16 and 32 maps;
  checkpoint ``dpt_hybrid-midas-501f0c75.pt``.

Module tree (names fixed by the checkpoints)::

    pretrained.model              the timm ViT (its classifier ``head`` is carried, never run)
    pretrained.act_postprocessK   "reassemble" of tap K: readout projection, tokens -> map,
                                  1x1 conv, resampling (transposed conv / stride-2 conv);
                                  children "0", "3", "4" as in the reference nn.Sequential
    scratch.layerK_rn             3x3 conv of tap K to 256 channels (no bias)
    scratch.refinenetK            fusion block: residual conv units, x2 bilinear, 1x1 conv
    scratch.output_conv           head: conv, x2, conv, ReLU, 1x1 conv, ReLU (non-negative)

The output is MiDaS-style relative inverse depth (disparity up to scale and shift), >= 0.

Pre- and post-processing follow nsff_pl's: the source frame (RGB / 255) is resized
bicubically with its aspect ratio kept by the "minimal" rule (:func:`dpt_input_size`), normalised
with mean 0.5 and std 0.5, and the prediction is upsampled bicubically; here straight to the
training resolution, and clamped at 0 against the bicubic overshoot. Like nsff_pl's
preprocessing, frames larger than 1280 x 720 are first scaled down (cv2.INTER_AREA).

On CUDA the frames are batched and the network runs in float16 autocast with channels_last
memory; on the CPU it runs in float32, one frame per call. timm and cv2 are imported inside the
functions that need them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import time
from collections.abc import Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nsff_core.errors import StageError
from nsff_core.model import io
from nsff_core.progress import Progress

from .images import cap_size
from .pretrained import fp16_autocast, torch_load_weights

log = logging.getLogger(__name__)

STAGE = "depth"
#: the DPT input's longer-or-shorter side target before snapping (the reference net size)
NET_SIZE = 384
#: both sides of the DPT input are multiples of this (ViT patch 16, one more stride-2 level)
SIZE_MULTIPLE = 32
#: nsff_pl's preprocessing cap: larger frames are scaled down first
DEFAULT_MAX_SOURCE_SIZE = (1280, 720)
#: input normalisation of the MiDaS-trained DPT checkpoints
MEAN = 0.5
STD = 0.5
_RELEASES = "https://github.com/isl-org/DPT/releases/download/1_0/"


@dataclass(frozen=True)
class DPTArch:
    """One DPT variant.

    Attributes:
        timm_name: timm model built as ``pretrained.model``.
        taps: where the four feature maps come from: ViT block indices (their outputs), except
            that a hybrid's first two taps are ResNet stage indices.
        channels: channels of the four reassembled maps (strides 4, 8, 16, 32).
        hybrid: whether the ViT embeds ResNet features (taps 1, 2 are ResNet stages).
        checkpoint: official checkpoint file name (sha256 starts with its 8-digit suffix).
    """

    timm_name: str
    taps: tuple[int, int, int, int]
    channels: tuple[int, int, int, int]
    hybrid: bool
    checkpoint: str

    @property
    def url(self) -> str:
        return _RELEASES + self.checkpoint


ARCHS: dict[str, DPTArch] = {
    "dpt_large": DPTArch(
        "vit_large_patch16_384",
        (5, 11, 17, 23),
        (256, 512, 1024, 1024),
        False,
        "dpt_large-midas-2f21e586.pt",
    ),
    "dpt_hybrid": DPTArch(
        "vit_base_r50_s16_384",
        (0, 1, 8, 11),
        (256, 512, 768, 768),
        True,
        "dpt_hybrid-midas-501f0c75.pt",
    ),
}
#: decoder width (all fusion blocks)
FEATURES = 256
PATCH = 16


def _arch(kind: str) -> DPTArch:
    try:
        return ARCHS[kind]
    except KeyError:
        raise ValueError(f"unknown DPT model {kind!r}; use one of {sorted(ARCHS)}") from None


# --------------------------------------------------------------------------- network


class ProjectReadout(nn.Module):
    """DPT's "project" readout: each patch token is concatenated with the class token and
    projected back to the token width (Linear + GELU).

    (B, 1 + N, C) tokens -> (B, N, C).
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * width, width), nn.GELU())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, 1:]
        cls = tokens[:, :1].expand_as(patches)
        return self.project(torch.cat([patches, cls], dim=-1))


class Reassemble(nn.Module):
    """Tokens of one ViT block -> an image-like map at stride 4, 8, 16 or 32.

    (B, 1 + gh * gw, C) tokens -> readout -> (B, C, gh, gw) -> 1x1 conv -> resample.
    The children are registered as "0" (readout), "3" (1x1 conv) and "4" (resampling, absent
    at stride 16): the reference code held them in an ``nn.Sequential`` whose parameter-free
    slots 1 and 2 (transpose, unflatten) leave these indices in the checkpoint's names.
    """

    def __init__(self, width: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.add_module("0", ProjectReadout(width))
        self.add_module("3", nn.Conv2d(width, out_channels, kernel_size=1))
        if stride == 4:
            resample = nn.ConvTranspose2d(out_channels, out_channels, kernel_size=4, stride=4)
        elif stride == 8:
            resample = nn.ConvTranspose2d(out_channels, out_channels, kernel_size=2, stride=2)
        elif stride == 32:
            resample = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=2, padding=1)
        elif stride == 16:
            resample = None
        else:
            raise ValueError(f"no reassemble operation for stride {stride}")
        if resample is not None:
            self.add_module("4", resample)

    def forward(self, tokens: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        x = getattr(self, "0")(tokens)
        b, _, c = x.shape
        x = x.transpose(1, 2).reshape(b, c, *grid_hw)
        x = getattr(self, "3")(x)
        resample = getattr(self, "4", None)
        return x if resample is None else resample(x)


class DPTEncoder(nn.Module):
    """``pretrained``: the timm ViT run up to its last tap, plus the reassemble modules.

    Input (B, 3, H, W) normalised RGB with H, W multiples of 32; output four maps at strides
    4, 8, 16, 32 with ``arch.channels`` channels.
    """

    def __init__(self, arch: DPTArch) -> None:
        super().__init__()
        import timm

        self.arch = arch
        self.model = timm.create_model(arch.timm_name, pretrained=False)
        width = self.model.embed_dim
        for k, (stride, ch) in enumerate(zip((4, 8, 16, 32), arch.channels, strict=True), 1):
            if arch.hybrid and k <= 2:
                continue  # ResNet stage outputs are used as they are
            self.add_module(f"act_postprocess{k}", Reassemble(width, ch, stride))

    def resized_pos_embed(self, grid_hw: tuple[int, int]) -> torch.Tensor:
        """The class-token and patch position embeddings, (1, 1 + gh * gw, C); the 24 x 24
        patch grid is resized bilinearly (align_corners=False) to ``grid_hw`` as in DPT."""
        pe = self.model.pos_embed
        cls_pe, grid = pe[:, :1], pe[:, 1:]
        side = math.isqrt(grid.shape[1])
        if (side, side) == tuple(grid_hw):
            return pe
        grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=grid_hw, mode="bilinear", align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, grid_hw[0] * grid_hw[1], -1)
        return torch.cat([cls_pe, grid], dim=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        vit = self.model
        b, _, h, w = x.shape
        if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
            raise ValueError(f"DPT input must be a multiple of {SIZE_MULTIPLE}, got {h}x{w}")
        grid_hw = (h // PATCH, w // PATCH)
        maps: list[torch.Tensor] = []
        if self.arch.hybrid:
            backbone = vit.patch_embed.backbone
            x = backbone.stem(x)
            for i, stage in enumerate(backbone.stages):
                x = stage(x)
                if i in self.arch.taps[:2]:
                    maps.append(x)
            x = backbone.norm(x)
        tokens = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([vit.cls_token.expand(b, -1, -1), tokens], dim=1)
        tokens = vit.pos_drop(tokens + self.resized_pos_embed(grid_hw).to(tokens.dtype))
        tokens = vit.norm_pre(tokens)
        vit_taps = self.arch.taps[2:] if self.arch.hybrid else self.arch.taps
        for i, block in enumerate(vit.blocks[: max(vit_taps) + 1]):
            tokens = block(tokens)
            if i in vit_taps:
                k = len(maps) + 1
                maps.append(getattr(self, f"act_postprocess{k}")(tokens, grid_hw))
        return maps


class ResidualConvUnit(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3x3 convolutions, width kept."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """Adds the (refined) skip map to the coarser path, refines, doubles the resolution
    (bilinear, align_corners=True) and mixes with a 1x1 conv.

    ``resConfUnit1`` is unused by the coarsest block (no skip) but exists in the checkpoint.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTDecoder(nn.Module):
    """``scratch``: projects the four maps to 256 channels, fuses them coarse to fine and
    predicts a (B, H, W) non-negative disparity at the input resolution."""

    def __init__(self, channels: Sequence[int], features: int = FEATURES) -> None:
        super().__init__()
        for k, ch in enumerate(channels, 1):
            self.add_module(
                f"layer{k}_rn", nn.Conv2d(ch, features, kernel_size=3, padding=1, bias=False)
            )
        for k in range(1, 5):
            self.add_module(f"refinenet{k}", FusionBlock(features))
        self.output_conv = nn.Sequential(
            nn.Conv2d(features, features // 2, kernel_size=3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(features // 2, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, kernel_size=1),
            nn.ReLU(),  # the non-negative head
        )

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        l1, l2, l3, l4 = (getattr(self, f"layer{k}_rn")(m) for k, m in enumerate(maps, 1))
        path = self.refinenet4(l4)
        path = self.refinenet3(path, l3)
        path = self.refinenet2(path, l2)
        path = self.refinenet1(path, l1)
        return self.output_conv(path).squeeze(1)


class DPT(nn.Module):
    """DPT depth network: (B, 3, H, W) normalised RGB (H, W multiples of 32) -> (B, H, W)
    relative disparity >= 0."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        arch = _arch(kind)
        self.kind = kind
        self.pretrained = DPTEncoder(arch)
        self.scratch = DPTDecoder(arch.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scratch(self.pretrained(x))


def build_dpt(kind: str = "dpt_large", device: Any = None) -> DPT:
    """A randomly initialised DPT (``"dpt_large"`` or ``"dpt_hybrid"``) in eval mode; nothing
    is downloaded.

    Args:
        device: where the parameters are created (default: torch's default device, the CPU).
            ``"meta"`` allocates nothing and skips the (seconds-long) random initialisation:
            for a model whose weights are then loaded with :func:`load_weights` (``assign``).
    """
    ctx = contextlib.nullcontext() if device is None else torch.device(device)
    with ctx:
        return DPT(kind).eval()


# --------------------------------------------------------------------------- weights


def checkpoint_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The parameter dict of a loaded checkpoint file.

    Accepts the official files (a bare state dict) and the usual wrappers: a training
    checkpoint ``{"model": ..., "optimizer": ...}`` (as DPT's own loader does), ``{"state_dict":
    ...}``, and ``module.`` prefixes from DataParallel.
    """
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise TypeError(f"a checkpoint must hold a state dict, got {type(obj).__name__}")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_weights(model: DPT, state: Mapping[str, torch.Tensor], assign: bool = False) -> None:
    """Load ``state`` into ``model`` with ``strict=True`` (see :func:`checkpoint_state_dict`
    for the accepted wrappers).

    ``assign=True`` makes the checkpoint's tensors the parameters (no copy; needed for a model
    built on the ``meta`` device); they are then converted to float32.

    Raises:
        RuntimeError: naming the missing and unexpected keys and the shape mismatches.
    """
    state = checkpoint_state_dict(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} (model {tuple(own[k].shape)})"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or extra or shapes:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", shapes)):
            if keys:
                more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
                parts.append(f"{len(keys)} {what}: {', '.join(keys[:5])}{more}")
        raise RuntimeError(f"not a {model.kind} checkpoint: " + "; ".join(parts))
    model.load_state_dict(state, strict=True, assign=assign)
    if assign:
        model.float()


def resolve_device(device: Any = None) -> torch.device:
    """``device`` if given, else CUDA when available, else the CPU (with a warning)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cpu":
        log.warning("DPT runs on the CPU: expect seconds per frame")
    return device


def load_dpt(
    kind: str = "dpt_large",
    checkpoint: str | os.PathLike | None = None,
    device: Any = None,
    scene: str | None = None,
) -> DPT:
    """DPT ``kind`` in eval mode on ``device`` (default CUDA when available, else CPU).

    Args:
        checkpoint: the official checkpoint of ``kind`` (``ARCHS[kind].checkpoint``), loaded
            with ``strict=True``; ``None`` keeps the random initialisation (tests only).

    Raises:
        StageError: unknown ``kind``, or the checkpoint is missing or does not fit the network.
    """
    try:
        arch = _arch(kind)
    except ValueError as exc:
        raise StageError(scene, STAGE, str(exc), f"use one of {sorted(ARCHS)}") from None
    path = None if checkpoint is None else Path(checkpoint)
    if path is not None and not path.is_file():
        raise StageError(
            scene,
            STAGE,
            f"DPT checkpoint not found: {path}",
            f"put {arch.checkpoint} ({arch.url}) there (the weights rule does this), or set "
            "depth.backend to 'sparse' (weights-free)",
        )
    dev = resolve_device(device)
    if path is None:
        log.warning("DPT: no checkpoint given, using RANDOM weights (the depth is meaningless)")
        model = build_dpt(kind)
    else:
        model = build_dpt(kind, device="meta")  # no random init: every weight is loaded
        try:
            # sha256 checked, weights_only=True (see torch_load_weights)
            state = torch_load_weights(path, scene, STAGE)
            load_weights(model, state, assign=True)
        except StageError:
            raise
        except (RuntimeError, TypeError, ValueError, OSError, EOFError, pickle.PickleError) as exc:
            raise StageError(
                scene,
                STAGE,
                f"{path} does not load into {kind}: {str(exc).splitlines()[0]}",
                f"use the official {arch.checkpoint} ({arch.url})",
            ) from exc
        log.info("DPT: loaded %s (%s)", path, kind)
    model = model.to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


# --------------------------------------------------------------------------- pre/post-processing


def dpt_input_size(
    w: int, h: int, target: int = NET_SIZE, multiple: int = SIZE_MULTIPLE
) -> tuple[int, int]:
    """DPT input size (w', h') of a w x h frame by MiDaS's "minimal" resize rule.

    Both sides get one scale: the scale of the side that needs the smaller change to reach
    ``target`` (|1 - s| smaller; ties go to the height). Each scaled side is then rounded to
    the nearest multiple of ``multiple`` (``np.round``: exact halves to the even multiple) and
    kept at least ``multiple``.

    Example: 1280 x 720: s_w = 384/1280 = 0.3, s_h = 384/720 = 0.533; |1 - s_h| is smaller, so
    both sides scale by 0.533 -> 682.7 x 384 -> 672 x 384.
    """
    if w < 1 or h < 1:
        raise ValueError(f"image size must be positive, got {w}x{h}")
    scale_w, scale_h = target / w, target / h
    scale = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h

    def snap(x: float) -> int:
        return max(multiple, int(np.round(x / multiple)) * multiple)

    return snap(scale * w), snap(scale * h)


def prepare_input(rgb: np.ndarray, net_size: int = NET_SIZE) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, h', w') float32 network input: RGB / 255, bicubic resize to
    :func:`dpt_input_size`, then (x - 0.5) / 0.5."""
    import cv2

    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.dtype} {rgb.shape}")
    size = dpt_input_size(rgb.shape[1], rgb.shape[0], net_size)
    img = cv2.resize(rgb.astype(np.float32) / 255.0, size, interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(((img - MEAN) / STD).transpose(2, 0, 1))


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def predict_disparities(
    model: DPT,
    frames: Sequence[np.ndarray],
    out_hw: tuple[int, int],
    device: Any = None,
    net_size: int = NET_SIZE,
    amp: bool | None = None,
) -> np.ndarray:
    """Disparity of a batch of same-sized frames, (N, out_h, out_w) float32 >= 0.

    Args:
        model: a :class:`DPT` (see :func:`load_dpt`).
        frames: N (H, W, 3) uint8 RGB frames of one size, at source resolution.
        out_hw: output size (training resolution); the prediction is resized bicubically.
        device: where to run (default: the model's device).
        net_size: target side of :func:`dpt_input_size` (384 for the official weights).
        amp: float16 autocast; default on for CUDA.
    """
    dev = _model_device(model) if device is None else torch.device(device)
    amp = dev.type == "cuda" if amp is None else amp
    batch = np.stack([prepare_input(f, net_size) for f in frames])
    x = torch.from_numpy(batch).to(dev)
    if dev.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), fp16_autocast(dev, amp):
        pred = model(x)
    pred = F.interpolate(
        pred.float().unsqueeze(1), size=tuple(out_hw), mode="bicubic", align_corners=False
    )
    return pred.squeeze(1).clamp_min(0).cpu().numpy().astype(np.float32)


def predict_disparity(
    model: DPT,
    rgb: np.ndarray,
    out_hw: tuple[int, int],
    device: Any = None,
    net_size: int = NET_SIZE,
) -> np.ndarray:
    """Disparity of one (H, W, 3) uint8 RGB frame: (out_h, out_w) float32 >= 0 (relative
    inverse depth, up to scale and shift). See :func:`predict_disparities`."""
    return predict_disparities(model, [rgb], out_hw, device, net_size)[0]


# --------------------------------------------------------------------------- the stage


def _read_frame(item: np.ndarray | str | os.PathLike, index: int, scene: str | None) -> np.ndarray:
    if isinstance(item, np.ndarray):
        return item
    try:
        return io.read_image(item, made_by="frames")
    except (ValueError, OSError) as exc:
        raise StageError(
            scene, STAGE, f"frame {index} ({item}) cannot be read: {exc}", "rerun the frames rule"
        ) from exc


def write_dpt_disparities(
    frames: Iterable[np.ndarray | str | os.PathLike],
    out_dir: str | os.PathLike,
    out_hw: tuple[int, int],
    model: DPT,
    device: Any = None,
    batch_size: int | None = None,
    net_size: int = NET_SIZE,
    max_source_size: tuple[int, int] | None = DEFAULT_MAX_SOURCE_SIZE,
    scene: str | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/{i:05d}.npy`` (float32 (out_h, out_w) disparity) for each frame into an
    existing folder (non-atomic; :func:`compute_depth_dpt` wraps it in ``atomic_dir``).

    Frames are read one batch at a time; consecutive frames of one size share a batch of up to
    ``batch_size`` (default 4 on CUDA, 1 on the CPU). Returns a summary (no ``time_s``).
    """
    dev = _model_device(model) if device is None else torch.device(device)
    if batch_size is None:
        batch_size = 4 if dev.type == "cuda" else 1
    out_dir = Path(out_dir)
    out_hw = (int(out_hw[0]), int(out_hw[1]))
    t0 = time.perf_counter()
    n = 0
    net_sizes: set[tuple[int, int]] = set()
    stats: list[tuple[float, float]] = []
    pending: list[np.ndarray] = []
    # done/total and an ETA at least every 30 s (no total for a generator of frames)
    total = len(frames) if isinstance(frames, Sized) else None
    progress = Progress("depth (dpt): frame", total, log)

    def flush() -> None:
        nonlocal n
        disps = predict_disparities(model, pending, out_hw, dev, net_size)
        for disp in disps:
            io.write_disparity(out_dir / io.frame_name(n, ".npy"), disp)
            stats.append((float(disp.min()), float(disp.max())))
            n += 1
        progress.update(n, f"{(time.perf_counter() - t0) / n:.2f} s/frame")
        pending.clear()

    for i, item in enumerate(frames):
        rgb = cap_size(_read_frame(item, i, scene), max_source_size)
        net_sizes.add(dpt_input_size(rgb.shape[1], rgb.shape[0], net_size))
        if pending and (len(pending) == batch_size or pending[0].shape != rgb.shape):
            flush()
        pending.append(rgb)
    if pending:
        flush()
    if n == 0:
        raise StageError(scene, STAGE, "no frames to run DPT on", "rerun the frames rule")
    seconds = time.perf_counter() - t0
    flat = [s for s in stats if s[1] <= s[0]]
    if flat:
        log.warning("depth (dpt): %d of %d disparity maps are constant", len(flat), n)
    return {
        "model": getattr(model, "kind", "dpt"),
        "frames": n,
        "net_wh": sorted(list(s) for s in net_sizes),
        "out_hw": list(out_hw),
        "device": str(dev),
        "amp": dev.type == "cuda",
        "batch_size": batch_size,
        "constant_maps": len(flat),
        "s_per_frame": round(seconds / n, 4),
    }


def compute_depth_dpt(
    frames: str | os.PathLike | Iterable[np.ndarray | str | os.PathLike],
    out_dir: str | os.PathLike,
    out_hw: tuple[int, int],
    kind: str = "dpt_large",
    checkpoint: str | os.PathLike | None = None,
    device: Any = None,
    scene: str | None = None,
    *,
    model: DPT | None = None,
    batch_size: int | None = None,
    net_size: int = NET_SIZE,
    max_source_size: tuple[int, int] | None = DEFAULT_MAX_SOURCE_SIZE,
) -> dict[str, Any]:
    """DPT disparity for every frame, written atomically as ``out_dir/{i:05d}.npy``.

    Args:
        frames: the frames in time order at source resolution: a folder of PNGs, or an
            iterable (a generator is fine) of (H, W, 3) uint8 RGB arrays or image paths.
        out_dir: output folder, replaced only when every frame succeeded.
        out_hw: training resolution (H, W) of the written maps.
        kind: ``"dpt_large"`` or ``"dpt_hybrid"``.
        checkpoint: the official checkpoint (see :func:`load_dpt`); ``None`` = random weights.
        device: default CUDA when available, else CPU.
        model: an already loaded DPT (then ``kind``/``checkpoint`` are not used).
        batch_size: frames per network call (default 4 on CUDA, 1 on the CPU).
        net_size: DPT input target side (384 for the official weights).
        max_source_size: (w, h) cap applied to frames first (:func:`cap_size`); None = none.

    Returns:
        a summary: backend, model, checkpoint, frames, DPT input size(s), device, timings.
    """
    t0 = time.perf_counter()
    if isinstance(frames, (str, os.PathLike)):
        frames = io.list_frames(frames)
    if model is None:
        model = load_dpt(kind, checkpoint, device, scene)
        if device is None:
            device = _model_device(model)
    with io.atomic_dir(out_dir) as tmp:
        summary = write_dpt_disparities(
            frames, tmp, out_hw, model, device, batch_size, net_size, max_source_size, scene
        )
    summary = {
        "backend": "dpt",
        **summary,
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "time_s": round(time.perf_counter() - t0, 3),
    }
    log.info("depth (dpt) for %d frames in %.1f s", summary["frames"], summary["time_s"])
    return summary

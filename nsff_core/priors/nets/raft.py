"""RAFT optical flow (Teed and Deng, ECCV 2020): the pretrained backend of the ``flow`` stage.

The network is torchvision's RAFT-Large. Its ``C_T_V1`` weights (file
``raft_large_C_T_V1-22a6c225.pth``) are the original ``raft-things.pth`` checkpoint (FlyingChairs
then FlyingThings3D) ported to torchvision's layout, the checkpoint nsff_pl ran.

Differences from nsff_pl's ``demo.py``:

- the replicate padding to a multiple of 8 is removed again before anything is saved (nsff_pl
  saved the padded field, slightly larger than the frame and offset by half the padding);
- the flow is computed at source resolution and then resized bilinearly to the training
  resolution, with u scaled by W'/W and v by H'/H;
- forward-backward consistency masks are written beside the flow (same test and files as the
  ``dis`` backend, :mod:`nsff_core.priors.flow`).

Images smaller than 128 px on a side are padded (replicate) up to 128: RAFT's correlation
pyramid needs feature maps of at least 16 x 16 at 1/8 resolution. The extra padding is removed
with the rest.

On CUDA the pairs are batched (forward and backward flows of several pairs in one call) and the
encoders and update block run in float16 autocast; the correlation volume and the flow
coordinates stay in float32, as in the original RAFT's ``mixed_precision`` mode. Heavy imports
(torch, torchvision) stay inside the functions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence, Sized
from pathlib import Path
from typing import Any

import numpy as np

from nsff_core.errors import StageError
from nsff_core.model.io import (
    atomic_dir,
    frame_name,
    list_frames,
    read_image,
    write_flo,
    write_mask,
)
from nsff_core.progress import Progress

from .flow_ops import consistency_mask, resize_flow
from .images import cap_size
from .pretrained import fp16_autocast, load_state_dict_file

log = logging.getLogger(__name__)

STAGE = "flow"
#: torchvision's file name of the C_T_V1 weights (= the original raft-things checkpoint)
RAFT_CHECKPOINT_NAME = "raft_large_C_T_V1-22a6c225.pth"
RAFT_CHECKPOINT_URL = "https://download.pytorch.org/models/" + RAFT_CHECKPOINT_NAME
#: padded images are at least this large on each side (16 feature cells at 1/8 resolution)
RAFT_MIN_SIDE = 128
#: nsff_pl's preprocessing cap: larger sources are scaled down by
#: max(w / 1280, h / 720) before RAFT, which bounds the all-pairs correlation volume
DEFAULT_MAX_SOURCE_SIZE = (1280, 720)


def resolve_device(device: Any = None):
    """``torch.device`` to run on: ``device`` if given, else CUDA when available, else CPU."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cpu":
        log.warning("running a pretrained network on the CPU: expect seconds per frame")
    return device


def load_raft(checkpoint: str | Path | None, device: Any = None, scene: str | None = None):
    """torchvision RAFT-Large in eval mode on ``device``.

    Args:
        checkpoint: a torchvision RAFT-Large state dict (``raft_large_C_T_V1-22a6c225.pth``),
            loaded strictly; ``None`` keeps the random initialisation (tests only).
    """
    from torchvision.models.optical_flow import raft_large

    model = raft_large(weights=None, progress=False)
    if checkpoint is None:
        log.warning("RAFT: no checkpoint given, using RANDOM weights (the flow is meaningless)")
    else:
        load_state_dict_file(
            model,
            checkpoint,
            "torchvision RAFT-Large",
            f"put torchvision's {RAFT_CHECKPOINT_NAME} ({RAFT_CHECKPOINT_URL}) there, or set "
            "flow.backend to 'dis' (weights-free)",
            f"use torchvision's {RAFT_CHECKPOINT_NAME}, which holds the original raft-things "
            "weights; the princeton-vl raft-things.pth uses other parameter names",
            STAGE,
            scene,
        )
    return model.eval().to(resolve_device(device) if device is None else device)


# --------------------------------------------------------------------------- padding


def pad_amounts(h: int, w: int, multiple: int = 8, min_side: int = 0) -> tuple[int, int, int, int]:
    """Padding ``(left, right, top, bottom)`` that makes (h, w) a multiple of ``multiple``.

    As RAFT's ``InputPadder`` in "sintel" mode, each side's total is split evenly, the odd
    pixel going to the right / bottom. Example: 61 x 45 (w x h) with multiple 8 pads to 64 x 48:
    (1, 2, 1, 2). With ``min_side`` the padded size is at least that (rounded up to the multiple).
    """
    min_side = -(-min_side // multiple) * multiple
    th = max(h + (-h) % multiple, min_side)
    tw = max(w + (-w) % multiple, min_side)
    ph, pw = th - h, tw - w
    return pw // 2, pw - pw // 2, ph // 2, ph - ph // 2


def pad_to_multiple(img, multiple: int = 8, min_side: int = 0):
    """Replicate-pad a tensor (..., H, W) (3D or 4D) to a multiple of ``multiple``.

    Returns ``(padded, pads)`` with ``pads = (left, right, top, bottom)``; :func:`unpad` with
    the same ``pads`` returns the input exactly.
    """
    import torch.nn.functional as F

    h, w = img.shape[-2:]
    pads = pad_amounts(h, w, multiple, min_side)
    if not any(pads):
        return img, pads
    return F.pad(img, list(pads), mode="replicate"), pads


def unpad(x, pads: tuple[int, int, int, int]):
    """Crop the padding ``(left, right, top, bottom)`` off the last two axes of ``x``."""
    left, right, top, bottom = pads
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]


# --------------------------------------------------------------------------- inference


def _raft_forward(model, image1, image2, iters: int, amp: bool):
    """Final flow (B, 2, H, W) of torchvision's RAFT for padded, normalised images.

    The same computation as ``RAFT.forward(...)[-1]`` but the convex upsampling runs once, after
    the last iteration (RAFT's test mode), and with ``amp`` the encoders, update block and mask
    head run in float16 autocast while the correlation volume and coordinates stay float32.
    Models without RAFT's parts (test doubles) are simply called.
    """
    import torch
    import torch.nn.functional as F

    if not hasattr(model, "corr_block"):
        return model(image1, image2, num_flow_updates=iters)[-1].float()
    from torchvision.models.optical_flow._utils import make_coords_grid, upsample_flow

    b, _, h, w = image1.shape
    device = image1.device

    def autocast():
        return fp16_autocast(device, amp)

    with autocast():
        fmaps = model.feature_encoder(torch.cat([image1, image2], dim=0))
        context_out = model.context_encoder(image1)
    fmap1, fmap2 = torch.chunk(fmaps.float(), chunks=2, dim=0)
    model.corr_block.build_pyramid(fmap1, fmap2)
    hs = model.update_block.hidden_state_size
    hidden, context = torch.split(context_out, [hs, context_out.shape[1] - hs], dim=1)
    hidden, context = torch.tanh(hidden), F.relu(context)
    coords0 = make_coords_grid(b, h // 8, w // 8, device=device)
    coords1 = coords0.clone()
    for _ in range(iters):
        corr = model.corr_block.index_pyramid(centroids_coords=coords1)
        with autocast():
            hidden, delta = model.update_block(hidden, context, corr, coords1 - coords0)
        coords1 = coords1 + delta.float()
    up_mask = None
    if model.mask_predictor is not None:
        with autocast():
            up_mask = model.mask_predictor(hidden)
        up_mask = up_mask.float()
    model.corr_block.corr_pyramid = None  # free the correlation volume
    return upsample_flow(coords1 - coords0, up_mask=up_mask)


def _model_device(model):
    import torch

    p = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    return p.device if p is not None else torch.device("cpu")


def raft_flows(
    model,
    imgs1: Sequence[np.ndarray],
    imgs2: Sequence[np.ndarray],
    iters: int = 20,
    device: Any = None,
    amp: bool | None = None,
) -> np.ndarray:
    """Flows (B, H, W, 2) float32 in pixels from each ``imgs1[k]`` to ``imgs2[k]``.

    The images are RGB uint8 (H, W, 3), all of one size; the result has that size (the padding
    to a multiple of 8 is removed). ``device`` defaults to the model's; ``amp`` (float16
    autocast) defaults to on for CUDA.
    """
    import torch

    device = _model_device(model) if device is None else torch.device(device)
    amp = device.type == "cuda" if amp is None else amp

    def to_tensor(imgs):
        x = torch.from_numpy(np.stack([np.asarray(i, dtype=np.uint8) for i in imgs])).to(device)
        return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # torchvision's OpticalFlow preset

    t1, pads = pad_to_multiple(to_tensor(imgs1), 8, RAFT_MIN_SIDE)
    t2, _ = pad_to_multiple(to_tensor(imgs2), 8, RAFT_MIN_SIDE)
    with torch.inference_mode():
        flow = unpad(_raft_forward(model, t1, t2, iters, amp), pads)
        return flow.permute(0, 2, 3, 1).float().cpu().numpy().astype(np.float32)


def raft_flow(
    model, img1: np.ndarray, img2: np.ndarray, iters: int = 20, device: Any = None
) -> np.ndarray:
    """Flow (H, W, 2) float32 in pixels from RGB uint8 ``img1`` to ``img2``, at their size."""
    return raft_flows(model, [img1], [img2], iters, device)[0]


# --------------------------------------------------------------------------- the stage


def _load_frame(item: np.ndarray | str | Path) -> np.ndarray:
    return item if isinstance(item, np.ndarray) else read_image(item, made_by="frames")


def compute_flow_raft(
    frames: str | Path | Iterable[np.ndarray | str | Path],
    flow_fw_dir: str | Path,
    flow_bw_dir: str | Path,
    flow_ok_dir: str | Path,
    out_hw: tuple[int, int],
    iters: int = 20,
    checkpoint: str | Path | None = None,
    device: Any = None,
    alpha1: float = 0.01,
    alpha2: float = 0.5,
    batch_pairs: int | None = None,
    max_source_size: tuple[int, int] | None = DEFAULT_MAX_SOURCE_SIZE,
    scene: str | None = None,
    model=None,
) -> dict:
    """RAFT flow between neighbouring frames, written as the ``dis`` backend writes it.

    Args:
        frames: the frames in time order at source resolution: a folder of PNGs, or an iterable
            (a generator is fine: frames are read one at a time) of RGB uint8 arrays or paths.
        flow_fw_dir, flow_bw_dir, flow_ok_dir: output folders (``flow_fw/{i:05d}.flo`` i -> i+1,
            ``flow_bw/{i:05d}.flo`` i -> i-1, ``flow_ok/{i:05d}_{fw,bw}.png``), replaced
            atomically.
        out_hw: training resolution (H, W) of the written flow and masks.
        iters: RAFT refinement iterations (nsff_pl: 20).
        checkpoint: torchvision RAFT-Large state dict (see :func:`load_raft`).
        device: torch device; default CUDA when available, else CPU.
        alpha1, alpha2: forward-backward consistency thresholds (training pixels), see
            :func:`nsff_core.priors.nets.flow_ops.consistency_mask`.
        batch_pairs: frame pairs per network call (each gives a forward and a backward flow);
            default 4 on CUDA, 1 on the CPU.
        max_source_size: (w, h) cap applied to the frames before RAFT (:func:`cap_size`);
            None = no cap.
        model: an already loaded RAFT (skips :func:`load_raft`).

    Returns:
        a summary: pairs, consistent fraction, mean forward magnitude (training pixels), the
        resolution RAFT ran at, device and seconds.
    """
    if iters < 1:
        raise StageError(scene, STAGE, f"flow.raft_iters must be >= 1, got {iters}", "")
    if isinstance(frames, (str, Path)):
        frames = list_frames(frames)
    out_hw = (int(out_hw[0]), int(out_hw[1]))
    if model is None:
        dev = resolve_device(device)
        model = load_raft(checkpoint, dev, scene)
    else:
        dev = _model_device(model) if device is None else device
    import torch

    dev = torch.device(dev)
    amp = dev.type == "cuda"
    if batch_pairs is None:
        batch_pairs = 4 if dev.type == "cuda" else 1

    t0 = time.perf_counter()
    stats: dict[str, list] = {"consistent": [], "magnitude": []}
    n_pairs = 0
    run_hw = None
    # done/total and an ETA at least every 30 s (no total for a generator of frames)
    total = len(frames) - 1 if isinstance(frames, Sized) else None
    progress = Progress("flow (raft): pair", total, log)
    with (
        atomic_dir(flow_fw_dir) as fw_dir,
        atomic_dir(flow_bw_dir) as bw_dir,
        atomic_dir(flow_ok_dir) as ok_dir,
    ):

        def process(batch: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
            k = len(batch)
            a = [p[1] for p in batch]
            b = [p[2] for p in batch]
            flows = raft_flows(model, a + b, b + a, iters, dev, amp)
            for j, (i, _, _) in enumerate(batch):
                fw = resize_flow(flows[j], out_hw)
                bw = resize_flow(flows[k + j], out_hw)
                ok_fw = consistency_mask(fw, bw, alpha1, alpha2)
                ok_bw = consistency_mask(bw, fw, alpha1, alpha2)
                write_flo(fw_dir / frame_name(i, ".flo"), fw)
                write_flo(bw_dir / frame_name(i + 1, ".flo"), bw)
                write_mask(ok_dir / f"{i:05d}_fw.png", ok_fw)
                write_mask(ok_dir / f"{i + 1:05d}_bw.png", ok_bw)
                stats["consistent"] += [ok_fw.mean(), ok_bw.mean()]
                stats["magnitude"].append(float(np.linalg.norm(fw, axis=-1).mean()))
            progress.update(batch[-1][0] + 1)

        prev = None
        pending: list[tuple[int, np.ndarray, np.ndarray]] = []
        for idx, item in enumerate(frames):
            cur = cap_size(_load_frame(item), max_source_size)
            if prev is not None:
                if cur.shape != prev.shape:
                    raise StageError(
                        scene,
                        STAGE,
                        f"frame {idx} is {cur.shape[1]}x{cur.shape[0]} but frame {idx - 1} is "
                        f"{prev.shape[1]}x{prev.shape[0]}",
                        "all frames of a scene must have one size",
                    )
                pending.append((idx - 1, prev, cur))
                n_pairs += 1
                if len(pending) == batch_pairs:
                    process(pending)
                    pending = []
            else:
                run_hw = cur.shape[:2]
            prev = cur
        if pending:
            process(pending)
        if n_pairs == 0:
            raise StageError(
                scene,
                STAGE,
                f"found {0 if prev is None else 1} frame(s); optical flow needs at least 2",
                "rerun the 'frames' rule (delete its outputs) and check the scene's source",
            )
    summary = {
        "backend": "raft",
        "pairs": n_pairs,
        "iters": iters,
        "raft_hw": list(run_hw),
        "out_hw": list(out_hw),
        "device": str(dev),
        "amp": amp,
        "consistent_fraction": float(np.mean(stats["consistent"])),
        "mean_magnitude_px": float(np.mean(stats["magnitude"])),
        "seconds": time.perf_counter() - t0,
    }
    log.info("flow (raft): done %s", summary)
    return summary

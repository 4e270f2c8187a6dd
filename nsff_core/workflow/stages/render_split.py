"""Rendering a trained scene along the camera path of a render split (rule ``render``).

Writes, for split ``{split}`` into ``out_dir``: ``{split}.mp4`` (or ``.gif``), the depth video
``{split}_depth.*`` (NDC depth, one colour scale for the whole video), the static-only
(background) video ``{split}_static.*``, the dynamic-only video ``{split}_dynamic.*`` (dynamic
content over grey), and the frames ``{split}/{i:05d}.png`` used by the evaluation.

Cameras of a path are in the SfM world with OpenCV axes (:class:`~nsff_core.model.paths.CameraPath`);
the checkpoint's :class:`~nsff_core.model.rays.SceneNormalization` takes them to the NSFF world, and
NDC always uses the training intrinsics (see :mod:`nsff_core.model.rays`). Fractional times (splits
``test_fixview{X}_interp{Y}`` with Y > 0, camera-path files) are rendered by time interpolation
(:mod:`nsff_core.model.interp`).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nsff_core.config import RenderSplitConfig
from nsff_core.errors import StageError
from nsff_core.holdout import model_times, source_frame_count
from nsff_core.model import io
from nsff_core.model.interp import render_view, split_time
from nsff_core.model.paths import CameraPath, make_path, parse_split
from nsff_core.progress import Progress

log = logging.getLogger(__name__)


@dataclass
class RenderedPath:
    """Renders of M cameras (numpy, float32): rgb, static_rgb, dynamic_rgb (M, H, W, 3) in
    [0, 1]; depth (M, H, W) NDC ray parameter; dynamicness (M, H, W) in [0, 1]."""

    rgb: np.ndarray
    depth: np.ndarray
    static_rgb: np.ndarray
    dynamic_rgb: np.ndarray
    dynamicness: np.ndarray


def load_system(ckpt: str | Path, device: str | torch.device):
    """The trained :class:`~nsff_core.model.system.NSFFSystem` of a checkpoint, in eval mode.

    Read with :func:`nsff_core.model.checkpoint.load_system` (``weights_only=True``); a corrupt or
    diverged checkpoint raises :class:`~nsff_core.errors.CorruptFileError` naming the file and
    rule ``train``.
    """
    from nsff_core.model.checkpoint import load_system as load

    return load(ckpt, device)


def render_camera_path(
    system, path: CameraPath, chunk: int, what: str = "render: frame"
) -> RenderedPath:
    """Render every camera of ``path`` with the trained ``system``.

    Integer times use the ordinary render; fractional times t + dt are interpolated between
    frames t and t + 1 by splatting (:mod:`nsff_core.model.interp`). Every image has the
    four streams (rgb, depth, static-only, dynamic-only with dynamicness).

    The path's times are source frame times; a run with held-out frames maps them to its
    own frame numbering first (:func:`nsff_core.holdout.model_times`), so a held-out frame is
    a fractional time between its two training neighbours.

    ``what`` starts the progress lines (done/total and an ETA, at least every 30 s).

    Raises:
        ValueError: a time outside [0, N - 1] of the source video's N frames.
    """
    meta = system.meta
    frame_ids, num_frames = meta.frame_ids, meta.num_frames
    path.check_times(source_frame_count(frame_ids, num_frames))
    times = model_times(path.times, frame_ids)
    norm = meta.normalization
    if norm is None:
        raise ValueError("the checkpoint keeps no scene normalization (written before it was)")
    h, w = (int(v) for v in path.hw)
    c2w_nsff = norm.apply_c2w(path.c2w)
    num_interp = sum(split_time(t, num_frames)[1] > 0 for t in times)
    if num_interp:
        log.info(
            "render: %d of %d frames at fractional times (interpolated)", num_interp, len(path)
        )
    out = {k: [] for k in ("rgb", "depth", "static_rgb", "dynamic_rgb", "dynamicness")}
    progress = Progress(what, len(path), log)
    for m in range(len(path)):
        img = render_view(system, c2w_nsff[m], path.K, (h, w), float(times[m]), chunk)
        out["rgb"].append(img.rgb.reshape(h, w, 3))
        out["depth"].append(img.depth.reshape(h, w))
        out["static_rgb"].append(img.static_rgb.reshape(h, w, 3))
        out["dynamic_rgb"].append(img.dynamic_rgb.reshape(h, w, 3))
        out["dynamicness"].append(img.dynamicness.reshape(h, w))
        progress.update(m + 1)  # the first frame, then at least every 30 s, and the last
    return RenderedPath(**{k: torch.stack(v).float().numpy() for k, v in out.items()})


def to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def colorize_depth(depth: np.ndarray) -> np.ndarray:
    """NDC depth (M, H, W) -> RGB uint8 (M, H, W, 3), one turbo colour scale for all frames
    (near = warm); the scale is the 1st-99th percentile range of the whole video."""
    import cv2

    lo, hi = np.percentile(depth, [1, 99])
    norm = np.clip((depth - lo) / max(hi - lo, 1e-8), 0, 1)
    grey = ((1.0 - norm) * 255).astype(np.uint8)
    return np.stack([cv2.applyColorMap(g, cv2.COLORMAP_TURBO)[..., ::-1] for g in grey])


def render_split(
    ckpt: str | Path,
    cameras_path: str | Path,
    split: str,
    out_dir: str | Path | None,
    paths_dir: str | Path | None = None,
    video_format: str = RenderSplitConfig.video_format,
    fps: float = RenderSplitConfig.fps,
    chunk: int = RenderSplitConfig.chunk,
    scene: str | None = None,
    outputs: dict[str, str | Path] | None = None,
) -> dict:
    """Render ``split`` of a trained scene; returns a summary (frames, seconds).

    Args:
        out_dir: folder of the default output names (module docstring); ``None`` when
            ``outputs`` is given.
        outputs: every output path by name: ``video`` (rgb), ``depth``, ``static`` and
            ``dynamic`` (videos; the suffix picks the format) and ``frames`` (folder). The
            render rule passes its declared outputs. Default: the names in ``out_dir``, videos
            in ``video_format``.

    Outputs of an earlier run are deleted first, and the new ones are written under scratch
    names that are renamed into place only when all of them are written: a failure leaves
    none of them, so no video of an older model passes for one of this model.
    """

    if outputs is None:
        d, ext = Path(out_dir), "." + video_format
        outputs = {
            "video": d / f"{split}{ext}",
            **{k: d / f"{split}_{k}{ext}" for k in ("depth", "static", "dynamic")},
            "frames": d / split,
        }
    targets = {k: Path(outputs[k]) for k in ("video", "depth", "static", "dynamic", "frames")}
    for p in targets.values():
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    try:
        spec = parse_split(split)
    except ValueError as exc:
        raise StageError(scene, "render", str(exc), "fix the scene's render splits") from None
    cams = io.read_cameras(cameras_path)
    try:
        path = make_path(spec, cams["c2w"], cams["K"], tuple(cams["hw"]), paths_dir)
    except (ValueError, FileNotFoundError) as exc:
        raise StageError(scene, "render", str(exc), "check the split name or path file") from None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    system = load_system(ckpt, device)
    try:
        meta = system.meta
        path.check_times(source_frame_count(meta.frame_ids, meta.num_frames))
    except ValueError as exc:
        raise StageError(
            scene, "render", f"split {split}: {exc}", "the checkpoint does not match the scene"
        ) from None
    t0 = time.perf_counter()
    r = render_camera_path(system, path, chunk)
    videos = {
        "depth": colorize_depth(r.depth),
        "static": to_uint8(r.static_rgb),
        "dynamic": to_uint8(r.dynamic_rgb),
    }
    # the contexts rename on a clean exit, last in first out: the rgb video comes last
    with contextlib.ExitStack() as stack:
        video = stack.enter_context(io.atomic_file(targets["video"]))
        frames_dir = stack.enter_context(io.atomic_dir(targets["frames"]))
        for i, img in enumerate(r.rgb):
            io.write_image(frames_dir / io.frame_name(i), to_uint8(img))
        io.write_video(video, to_uint8(r.rgb), fps)
        for name, frames in videos.items():
            io.write_video(stack.enter_context(io.atomic_file(targets[name])), frames, fps)
    summary = {"split": split, "frames": len(path), "seconds": time.perf_counter() - t0}
    log.info("render: done %s", summary)
    return summary

"""Optical-flow prior between neighbouring frames, with forward-backward consistency masks.

Outputs, all at training resolution (the frames' resolution):

- ``flow_fw/{i:05d}.flo``: flow from frame i to i+1, for i = 0 .. N-2
- ``flow_bw/{i:05d}.flo``: flow from frame i to i-1, for i = 1 .. N-1
- ``flow_ok/{i:05d}_fw.png`` / ``{i:05d}_bw.png``: 255 where the flow passes the
  forward-backward test of Sundaram et al. (ECCV 2010) and lands inside the image.

Backends: ``dis`` (OpenCV DIS, weights-free) and ``raft`` (pretrained, :mod:`.raft`).

The ``dis`` backend, step by step (defaults in brackets):

1. Size (``flow.dis_scale``, ``auto``): DIS runs on the training frames, or on the source frames
   (read through ``frames.json``, long side capped at 1280x720) when those are smaller, i.e.
   when the frames rule enlarged them; ``training`` and ``source`` force one. Enlarged frames
   hold no more detail than their source, only interpolation that DIS's finest patches would
   fit to. A field computed at another size is resized to the training size with
   :func:`~.flow_ops.resize_flow` (vectors scaled, pixel centres kept).
2. DIS (``flow.dis_preset``, ``fine``): OpenCV's presets, plus ``fine`` = ``medium`` with its
   finest pyramid level at full resolution (``medium`` stops at half resolution) and a
   smoother variational refinement (alpha 40 instead of 20).
3. Prediction (``flow.dis_predict``, on): DIS searches a limited distance around its coarsest
   level's estimate, so a thin mover that travels far between the two frames (a walker's
   legs 11-13 px apart at 320x180 across a held-out frame) is lost: the field follows the
   background. The neighbouring pair's flow, continued at constant velocity (the flow from
   frame i to its previous frame, negated and scaled by the ratio of the frame gaps, for
   i -> i + 1; the next pair's for i + 1 -> i), seeds a second DIS run, and each pixel keeps
   whichever of the two fields matches the colours better (mean absolute difference of the
   warped frame in a 7x7 window). Only the frames of the sequence being processed are read,
   so the flow of a run with held-out frames never sees them.
4. Fill (``flow.dis_fill_radius``, 16 px): pixels that fail the forward-backward test (occluded
   pixels and the halo that the patches smear around a mover's edge) get the colour- and
   distance-weighted mean flow of the consistent pixels within that radius
   (:func:`~.flow_ops.fill_inconsistent`), so a background pixel takes its background's flow and
   not the mover's. The consistency masks are then computed on the final fields.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from nsff_core.model.io import (
    atomic_dir,
    frame_name,
    list_frames,
    read_image,
    write_flo,
    write_mask,
)

from ..config import FlowConfig
from ..errors import StageError
from . import backends
from .nets import pretrained as P
from .nets.flow_ops import consistency_mask, fill_inconsistent, resize_flow

log = logging.getLogger(__name__)

#: OpenCV's DIS presets, and fine: medium refined down to full resolution, smoother refinement
_DIS_PRESETS = ("ultrafast", "fast", "medium", "fine")
#: dis_scale values: auto = the source frames when the frames rule enlarged them, else training
_DIS_SCALES = ("auto", "training", "source")
#: fine: finest pyramid level (0 = full resolution; medium's is 1, half resolution) and the
#: variational refinement's smoothness weight (OpenCV's default 20)
_FINE_FINEST_SCALE = 0
_FINE_REFINE_ALPHA = 40.0


class DisFlow:
    """OpenCV's Dense Inverse Search optical flow on grey images (Kroeger et al., ECCV 2016).

    ``preset``: OpenCV's ``ultrafast``, ``fast`` or ``medium``, or ``fine`` (= medium with the
    finest pyramid level at full resolution and refinement alpha 40).
    """

    def __init__(self, preset: str = "fine") -> None:
        import cv2

        if preset not in _DIS_PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; choose one of {_DIS_PRESETS}")
        code = {
            "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
            "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
            "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
            "fine": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
        }[preset]
        # Two instances: an OpenCV DIS object that was once given an initial flow returns a
        # different field for a later call without one (measured: up to 10 px), so the runs
        # from zero keep their own and stay independent of the order of calls.
        self._dis = cv2.DISOpticalFlow_create(code)
        self._dis_init = cv2.DISOpticalFlow_create(code)
        for dis in self.instances:
            if preset == "fine":
                dis.setFinestScale(_FINE_FINEST_SCALE)
                dis.setVariationalRefinementAlpha(_FINE_REFINE_ALPHA)

    @property
    def instances(self) -> tuple:
        """The OpenCV DIS objects: for runs from zero, and for runs from an initial flow."""
        return self._dis, self._dis_init

    def __call__(
        self, rgb_a: np.ndarray, rgb_b: np.ndarray, init: np.ndarray | None = None
    ) -> np.ndarray:
        """Flow (H, W, 2) float32 in pixels from image a to image b (RGB uint8); ``init``: an
        (H, W, 2) estimate DIS starts from instead of zero."""
        import cv2

        grey_a = cv2.cvtColor(rgb_a, cv2.COLOR_RGB2GRAY)
        grey_b = cv2.cvtColor(rgb_b, cv2.COLOR_RGB2GRAY)
        if init is None:
            return self._dis.calc(grey_a, grey_b, None).astype(np.float32)
        flow = np.ascontiguousarray(init, dtype=np.float32).copy()
        return self._dis_init.calc(grey_a, grey_b, flow).astype(np.float32)


#: side of the window (pixels at the estimator's size) over which the colour residuals of the
#: plain and the predicted DIS fields are compared
_RESIDUAL_WINDOW = 7


def warp_residual(rgb_a: np.ndarray, rgb_b: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """(H, W) mean absolute grey-level difference between image a and image b sampled at
    ``x + flow(x)``, averaged over a window of :data:`_RESIDUAL_WINDOW` pixels (targets
    outside image b read its nearest border pixel)."""
    import cv2

    h, w = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    grey_a = cv2.cvtColor(rgb_a, cv2.COLOR_RGB2GRAY).astype(np.float32)
    grey_b = cv2.cvtColor(rgb_b, cv2.COLOR_RGB2GRAY).astype(np.float32)
    warped = cv2.remap(
        grey_b,
        xs + flow[..., 0],
        ys + flow[..., 1],
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    k = _RESIDUAL_WINDOW
    return cv2.blur(np.abs(grey_a - warped), (k, k))


def predicted_dis(
    estimator,
    rgb_a: np.ndarray,
    rgb_b: np.ndarray,
    plain: np.ndarray,
    prediction: np.ndarray,
) -> np.ndarray:
    """DIS from a to b started at ``prediction``, fused per pixel with the ``plain`` field
    (DIS from zero): each pixel keeps the field whose warp of b matches a better
    (:func:`warp_residual`; the plain one on ties). All arrays at the estimator's size."""
    guided = estimator(rgb_a, rgb_b, init=prediction)
    better = warp_residual(rgb_a, rgb_b, guided) < warp_residual(rgb_a, rgb_b, plain)
    return np.where(better[..., None], guided, plain).astype(np.float32)


def make_flow_backend(cfg: FlowConfig):
    """The flow estimator named by ``cfg.backend``: a callable (rgb_a, rgb_b) -> (H, W, 2)."""
    if cfg.backend == "dis":
        return DisFlow(cfg.dis_preset)
    raise ValueError(f"unknown flow backend {cfg.backend!r}")


def dis_scale(cfg: FlowConfig, frames_json: str | Path | None, scene: str | None = None) -> str:
    """Where DIS runs for ``cfg.dis_scale``: ``"training"`` or ``"source"`` frames.

    ``auto`` picks the source frames when ``frames.json`` records that the frames rule enlarged
    them (source smaller than the training size on either side), else the training frames;
    without ``frames_json`` (a library call on a bare frames folder) it keeps the training
    frames. ``source`` needs ``frames_json``.
    """
    if cfg.dis_scale not in _DIS_SCALES:
        raise StageError(
            scene,
            "flow",
            f"unknown flow.dis_scale {cfg.dis_scale!r}",
            f"set flow.dis_scale to one of {', '.join(_DIS_SCALES)}",
        )
    if cfg.dis_scale == "training":
        return "training"
    if frames_json is None:
        if cfg.dis_scale == "source":
            P.require(frames_json, "frames.json (flow.dis_scale: source)", "flow", scene)
        return "training"
    if cfg.dis_scale == "source":
        return "source"
    info = json.loads(Path(frames_json).read_text())
    (sw, sh), (w, h) = info["source_size"], info["size"]
    return "source" if sw < w or sh < h else "training"


def dis_pair(
    estimator,
    src_a: np.ndarray,
    src_b: np.ndarray,
    img_a: np.ndarray,
    img_b: np.ndarray,
    cfg: FlowConfig,
    *,
    plain: tuple[np.ndarray, np.ndarray] | None = None,
    predicted: tuple[np.ndarray | None, np.ndarray | None] = (None, None),
) -> tuple[np.ndarray, np.ndarray]:
    """Forward and backward flow (H, W, 2) float32 at the training size of one frame pair.

    ``src_a``/``src_b``: the images the estimator runs on (training or source frames, RGB
    uint8); ``img_a``/``img_b``: the training frames (H, W, 3), which set the output size and
    guide the fill of inconsistent pixels (``cfg.dis_fill_radius``, 0 = no fill).
    ``plain``: the estimator's forward and backward fields of this pair when already computed;
    ``predicted``: forward and backward estimates at the estimator's size (or None) that seed a
    second DIS run each, fused with the plain field by :func:`predicted_dis`.
    """
    hw = img_a.shape[:2]
    fw, bw = plain if plain is not None else (estimator(src_a, src_b), estimator(src_b, src_a))
    if predicted[0] is not None:
        fw = predicted_dis(estimator, src_a, src_b, fw, predicted[0])
    if predicted[1] is not None:
        bw = predicted_dis(estimator, src_b, src_a, bw, predicted[1])
    fw, bw = resize_flow(fw, hw), resize_flow(bw, hw)
    if cfg.dis_fill_radius > 0:
        a1, a2 = cfg.consistency_alpha1, cfg.consistency_alpha2
        ok_fw, ok_bw = consistency_mask(fw, bw, a1, a2), consistency_mask(bw, fw, a1, a2)
        fw = fill_inconsistent(fw, ok_fw, img_a, cfg.dis_fill_radius)
        bw = fill_inconsistent(bw, ok_bw, img_b, cfg.dis_fill_radius)
    return fw, bw


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
    indices: list[int] | None = None,
) -> dict:
    """Compute forward and backward flow for all neighbouring frames of ``frames_dir``.

    ``indices`` (increasing frame numbers): the flow of that subsequence instead, its pairs
    numbered 0, 1, ... as if it were the whole video (rule ``flow_holdout``: the training
    frames of a run with held-out frames, :mod:`nsff_core.holdout`).

    Writes the three output folders atomically (all or nothing) and returns a summary with the
    fraction of consistent pixels and the mean flow magnitude. ``frames_json`` locates the
    source frames, which the pretrained backend (raft) always reads and ``dis`` reads when
    ``flow.dis_scale`` asks for them (see the module docstring); raft takes its checkpoint
    from the ``weights`` marker (:mod:`nsff_core.priors.nets.pretrained`).

    The backend is the record ``cfg.backend`` of :mod:`nsff_core.priors.backends`; an unknown
    name takes the ``dis`` path, which reports it.
    """
    run = backends.run_function("flow", cfg.backend, fallback=dis_flow)
    return run(
        frames_dir,
        flow_fw_dir,
        flow_bw_dir,
        flow_ok_dir,
        cfg,
        scene,
        frames_json=frames_json,
        weights=weights,
        indices=indices,
    )


def dis_flow(
    frames_dir: str | Path,
    flow_fw_dir: str | Path,
    flow_bw_dir: str | Path,
    flow_ok_dir: str | Path,
    cfg: FlowConfig,
    scene: str | None = None,
    *,
    frames_json: str | Path | None = None,
    weights: str | Path | None = None,
    indices: list[int] | None = None,
) -> dict:
    """The ``dis`` backend of :func:`compute_flow` (same arguments; ``weights`` unused)."""
    frames = list_frames(frames_dir)
    n_all = len(frames)
    if indices is not None:
        frames = [frames[i] for i in _check_indices(indices, n_all, scene)]
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
    scale = dis_scale(cfg, frames_json, scene)

    n = len(frames)
    if scale == "source":
        sources = _subsequence(_source_frames(frames_json, n_all, scene), indices)
    else:
        sources = None
    numbers = list(range(n)) if indices is None else [int(i) for i in indices]
    t0 = time.perf_counter()
    consistent, magnitude = [], []
    with (
        atomic_dir(flow_fw_dir) as fw_dir,
        atomic_dir(flow_bw_dir) as bw_dir,
        atomic_dir(flow_ok_dir) as ok_dir,
    ):
        pairs = dis_sequence(_checked_frames(frames, sources, scene), numbers, estimator, cfg)
        for i, (fw, bw) in enumerate(pairs):
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
    summary = {
        "backend": cfg.backend,
        "preset": cfg.dis_preset,
        "predict": cfg.dis_predict,
        "scale": scale,
        "fill_radius": cfg.dis_fill_radius,
        "pairs": n - 1,
        "consistent_fraction": float(np.mean(consistent)),
        "mean_magnitude_px": float(np.mean(magnitude)),
        "seconds": time.perf_counter() - t0,
    }
    log.info("flow: done %s", summary)
    return summary


class _PairWindow:
    """The frames of a sequence taken in order from an iterator, and the plain DIS fields of
    its pairs, kept for the pairs around the one being processed only (source frames can be
    1280x720)."""

    def __init__(self, frames: Iterator[tuple[np.ndarray, np.ndarray]], estimator) -> None:
        self._iter, self._estimator = frames, estimator
        self._frames: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._plain: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._next = 0

    def frame(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Training frame k and the image the estimator runs on (the same, or its source)."""
        while self._next <= k:
            self._frames[self._next] = next(self._iter)
            self._next += 1
        return self._frames[k]

    def plain(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """DIS from zero of pair k: (frame k -> k + 1, frame k + 1 -> k) at the estimator's size."""
        if k not in self._plain:
            src_a, src_b = self.frame(k)[1], self.frame(k + 1)[1]
            self._plain[k] = (self._estimator(src_a, src_b), self._estimator(src_b, src_a))
        return self._plain[k]

    def done_with(self, k: int) -> None:
        """Pair k is written: drop what pair k + 1 no longer needs (frames up to k, pairs
        before k; its forward prediction comes from pair k)."""
        for j in [j for j in self._frames if j <= k]:
            del self._frames[j]
        for j in [j for j in self._plain if j < k]:
            del self._plain[j]


def _checked_frames(paths: list[Path], sources, scene: str | None):
    """(training frame, estimator image) of each path in order; StageError when a frame's size
    differs from the previous one's."""
    prev = None
    for j, p in enumerate(paths):
        img = read_image(p, made_by="frames")
        if prev is not None and img.shape != prev.shape:
            raise StageError(
                scene,
                "flow",
                f"{p.name} is {img.shape[1]}x{img.shape[0]} but "
                f"{paths[j - 1].name} is {prev.shape[1]}x{prev.shape[0]}",
                "rerun the 'frames' rule, which resizes every frame to one size",
            )
        prev = img
        yield img, (next(sources) if sources is not None else img)


def dis_sequence(
    frames: Iterable[tuple[np.ndarray, np.ndarray]],
    numbers: list[int],
    estimator,
    cfg: FlowConfig,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Forward and backward flow at the training size of each consecutive pair of a sequence.

    ``frames``: (training frame, image the estimator runs on) per frame, in order;
    ``numbers``: the frames' numbers in the video, whose gaps scale the constant-velocity
    predictions of ``cfg.dis_predict`` (a held-out frame makes a gap of 2). Yields (fw, bw) of
    pair i (frames i and i + 1) for i = 0 .. len(numbers) - 2, as :func:`dis_pair` makes them.
    """
    n = len(numbers)
    window = _PairWindow(iter(frames), estimator)
    for i in range(n - 1):
        (img_a, src_a), (img_b, src_b) = window.frame(i), window.frame(i + 1)
        predicted: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
        if cfg.dis_predict:
            # constant velocity: i -> i+1 continues i -> i-1 backwards, i+1 -> i continues
            # i+1 -> i+2 backwards, each scaled by the ratio of the frame gaps
            gap = numbers[i + 1] - numbers[i]
            fw_pred = bw_pred = None
            if i > 0:
                fw_pred = window.plain(i - 1)[1] * (-gap / (numbers[i] - numbers[i - 1]))
            if i + 2 < n:
                bw_pred = window.plain(i + 1)[0] * (-gap / (numbers[i + 2] - numbers[i + 1]))
            predicted = (fw_pred, bw_pred)
        yield dis_pair(
            estimator, src_a, src_b, img_a, img_b, cfg, plain=window.plain(i), predicted=predicted
        )
        window.done_with(i)


#: written by :func:`compute_holdout_flow` beside its flow folders: which frames they link
HOLDOUT_JSON = "training_frames.json"


def compute_holdout_flow(
    frames_dir: str | Path,
    out_dir: str | Path,
    cfg: FlowConfig,
    every: int,
    scene: str | None = None,
    *,
    frames_json: str | Path | None = None,
    weights: str | Path | None = None,
) -> dict:
    """Flow between consecutive training frames of a run with held-out frames (rule
    ``flow_holdout``, :mod:`nsff_core.holdout`).

    Writes ``out_dir/{flow_fw,flow_bw,flow_ok}`` in the layout of :func:`compute_flow`, pairs
    numbered by training frame (pair j links training frames j and j + 1), and
    ``out_dir/training_frames.json`` (``holdout_every``, ``num_frames``, ``frame_ids``: the
    source frame of each training frame); all or nothing.
    """
    from nsff_core.holdout import training_frames

    n = len(list_frames(frames_dir))
    try:
        ids = training_frames(n, every)
    except ValueError as exc:
        raise StageError(
            scene, "flow_holdout", str(exc), "set eval.holdout_every (or the sheet column)"
        ) from None
    log.info(
        "flow_holdout: %d of %d frames are training frames (eval.holdout_every %d)",
        len(ids),
        n,
        every,
    )
    with atomic_dir(out_dir) as tmp:
        summary = compute_flow(
            frames_dir,
            tmp / "flow_fw",
            tmp / "flow_bw",
            tmp / "flow_ok",
            cfg,
            scene,
            frames_json=frames_json,
            weights=weights,
            indices=ids.tolist(),
        )
        facts = {"holdout_every": int(every), "num_frames": n, "frame_ids": ids.tolist()}
        (tmp / HOLDOUT_JSON).write_text(json.dumps(facts) + "\n")
    return summary


def _check_indices(indices: list[int], n: int, scene: str | None) -> list[int]:
    """``indices`` as a list, checked to be increasing frame numbers below ``n``."""
    idx = [int(i) for i in indices]
    steps = np.diff(idx) if len(idx) > 1 else np.zeros(0)
    if len(idx) < 2 or (steps <= 0).any() or idx[0] < 0 or idx[-1] >= n:
        raise StageError(
            scene,
            "flow",
            f"frame subsequence {idx[:5]}... is not increasing within the {n} frames",
            "rerun the 'frames' rule (delete its outputs)",
        )
    return idx


def _subsequence(frames, indices: list[int] | None):
    """The items of the iterator ``frames`` at ``indices`` (all of them when None)."""
    if indices is None:
        return frames
    wanted = set(int(i) for i in indices)
    return (f for i, f in enumerate(frames) if i in wanted)


def _source_frames(frames_json: str | Path, n: int, scene: str | None):
    """Iterator over the ``n`` source frames (RGB uint8, capped at 1280x720) of ``frames_json``
    that the ``n`` training frames were made from; StageError when their number differs."""
    from .frames import read_source_frames

    count = len(json.loads(Path(frames_json).read_text())["source_indices"])
    if count != n:
        raise StageError(
            scene,
            "flow",
            f"{frames_json} lists {count} source frames but the frames folder holds {n}",
            "rerun the 'frames' rule (delete frames/ and frames.json)",
        )
    return read_source_frames(frames_json, scene=scene, stage="flow")


def pretrained_flow(
    frames_dir: str | Path,
    flow_fw_dir: str | Path,
    flow_bw_dir: str | Path,
    flow_ok_dir: str | Path,
    cfg: FlowConfig,
    scene: str | None = None,
    *,
    frames_json: str | Path | None = None,
    weights: str | Path | None = None,
    indices: list[int] | None = None,
) -> dict:
    """The ``raft`` backend of :func:`compute_flow` (same arguments; ``frames_dir`` unused: it
    reads the source frames): RAFT-Large flow at source resolution, resized to the training
    size (vectors scaled); ``indices``: of that subsequence of the frames only."""
    P.require(frames_json, "frames.json", "flow", scene)
    P.require(weights, "the weights.json marker", "flow", scene)
    from .frames import read_source_frames
    from .nets.raft import compute_flow_raft
    from .weights import resolve_from_marker

    if indices is not None:
        count = len(json.loads(Path(frames_json).read_text())["source_indices"])
        indices = _check_indices(indices, count, scene)
    return compute_flow_raft(
        _subsequence(read_source_frames(frames_json, scene=scene, stage="flow"), indices),
        flow_fw_dir,
        flow_bw_dir,
        flow_ok_dir,
        out_hw=P.training_hw(frames_json),
        iters=cfg.raft_iters,
        checkpoint=resolve_from_marker(
            weights, backends.get("flow", "raft").weights[0], scene, "flow"
        ),
        alpha1=cfg.consistency_alpha1,
        alpha2=cfg.consistency_alpha2,
        scene=scene,
    )

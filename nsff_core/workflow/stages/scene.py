"""Reading one scene's frames and priors from ``results/<scene>/`` for training.

The workflow side of the training data: :func:`load_scene` reads the files the prior rules wrote
(checking them, naming the rule that writes a bad one) and hands the arrays to
:func:`nsff_core.model.data.scene_data_from_arrays`.
"""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path

import numpy as np

from nsff_core.errors import CorruptFileError, StageError
from nsff_core.model import io
from nsff_core.model.cameras import forward_zoom
from nsff_core.model.data import SceneData, nearest_content_depth, scene_data_from_arrays

log = logging.getLogger(__name__)


def _read_stack(paths: list[Path], read, hw: tuple[int, int] | None, made_by: str) -> np.ndarray:
    """``read`` each of ``paths`` (one per frame or frame pair) and stack them.

    Every array must be ``hw`` = (H, W) in its first two axes (the frames' size; None: the
    first file's): a file of another size is from an older run or damaged, and is reported as
    a :class:`~nsff_core.errors.CorruptFileError` of the rule ``made_by`` (delete the folder).
    """
    arrays = []
    for p in paths:
        a = read(p)
        hw = a.shape[:2] if hw is None else hw
        if a.shape[:2] != tuple(hw):
            raise CorruptFileError(
                p,
                f"it is {a.shape[1]}x{a.shape[0]} but the frames are {hw[1]}x{hw[0]} (W x H)",
                made_by,
                output=Path(p).parent,
            )
        arrays.append(a)
    return np.stack(arrays)


def _holdout_ids(d: Path, n: int, every: int, scene: str | None) -> np.ndarray:
    """The training frames of a run with held-out frames, checked against what rule
    ``flow_holdout`` wrote (its flow links exactly these frames)."""
    from nsff_core.holdout import training_frames
    from nsff_core.priors.flow import HOLDOUT_JSON

    try:
        ids = training_frames(n, every)
    except ValueError as exc:
        raise StageError(scene, "train", str(exc), "set eval.holdout_every") from None
    facts_path = d / "flow_holdout" / HOLDOUT_JSON
    try:
        facts = json.loads(facts_path.read_text())
        written = [int(i) for i in facts["frame_ids"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(
            facts_path, f"unreadable ({exc})", "flow_holdout", output=facts_path.parent
        ) from None
    if written != ids.tolist():
        raise CorruptFileError(
            facts_path,
            f"it links frames {written[:6]}... but eval.holdout_every {every} of {n} frames "
            f"trains on {ids.tolist()[:6]}...",
            "flow_holdout",
            output=facts_path.parent,
        )
    return ids


def load_scene(
    scene_dir: str | Path, scene: str | None = None, holdout_every: int = 0
) -> SceneData:
    """Read frames, flows, masks, disparities and cameras of ``results/<scene>/``.

    ``holdout_every`` k >= 2: only the training frames of :mod:`nsff_core.holdout` are read,
    renumbered 0 .. M - 1, with the flow between them from ``flow_holdout/``; the held-out
    frames' images and priors are not read at all.

    Raises:
        StageError: cameras and frames disagree in number.
        CorruptFileError: a file does not read (truncated, garbled, wrong size), naming it and
            the rule that writes it; :func:`nsff_core.workflow.stage.run_stage` reports it.
    """
    from nsff_core.priors.depth import sparse_points

    d = Path(scene_dir)
    frames = io.list_frames(d / "frames")
    n_all = len(frames)
    cams = io.read_cameras(d / "cameras.npz")
    if len(cams["c2w"]) != n_all:
        raise StageError(
            scene,
            "train",
            f"{d / 'cameras.npz'} has {len(cams['c2w'])} cameras for {n_all} frames",
            "rerun the sfm rule (delete its outputs) so that cameras and frames match",
        )
    ids = np.arange(n_all, dtype=np.int64)
    flow_dir = d
    if holdout_every:
        ids = _holdout_ids(d, n_all, holdout_every, scene)
        flow_dir = d / "flow_holdout"
        log.info(
            "scene %s: training on %d of %d frames (eval.holdout_every %d holds out %s)",
            scene,
            len(ids),
            n_all,
            holdout_every,
            ", ".join(str(i) for i in sorted(set(range(n_all)) - set(ids.tolist()))),
        )
    frames = [frames[i] for i in ids]
    n = len(frames)
    rgb = _read_stack(frames, partial(io.read_image, made_by="frames"), None, "frames")
    hw = rgb.shape[1:3]
    if tuple(int(v) for v in cams["hw"]) != hw:
        raise io.CorruptFileError(
            d / "cameras.npz",
            f"its image size hw={cams['hw'].tolist()} is not the frames' {list(hw)} (H, W)",
            "sfm",
        )

    def stack(folder: Path, names: list[str], read, made_by: str) -> np.ndarray:
        return _read_stack([folder / name for name in names], read, hw, made_by)

    pairs = range(n - 1)
    flow_rule = "flow_holdout" if holdout_every else "flow"
    flow_ok = partial(io.read_mask, made_by=flow_rule)
    disp_names = [io.frame_name(int(i), ".npy") for i in ids]
    disp = stack(d / "disp", disp_names, io.read_disparity, "depth")
    fw = stack(
        flow_dir / "flow_fw", [io.frame_name(i, ".flo") for i in pairs], io.read_flo, flow_rule
    )
    bw_names = [io.frame_name(i + 1, ".flo") for i in pairs]
    bw = stack(flow_dir / "flow_bw", bw_names, io.read_flo, flow_rule)
    fw_ok = stack(flow_dir / "flow_ok", [f"{i:05d}_fw.png" for i in pairs], flow_ok, flow_rule)
    bw_ok = stack(flow_dir / "flow_ok", [f"{i + 1:05d}_bw.png" for i in pairs], flow_ok, flow_rule)
    mask_names = [io.frame_name(int(i)) for i in ids]
    dynamic = stack(d / "masks", mask_names, io.read_mask, "masks")

    per_frame = sparse_points(d / "sfm", cams, min_track_length=2, scene=scene)
    per_frame = [per_frame[int(i)] for i in ids]
    depths, at_points = [], []
    for (xy, pdisp), dmap in zip(per_frame, disp, strict=True):
        depths.append(1.0 / np.maximum(pdisp, 1e-12))
        ij = np.round(xy).astype(int)
        ij[:, 0] = ij[:, 0].clip(0, dmap.shape[1] - 1)
        ij[:, 1] = ij[:, 1].clip(0, dmap.shape[0] - 1)
        at_points.append(dmap[ij[:, 1], ij[:, 0]])
    content = nearest_content_depth(depths, at_points, list(disp))
    log.info("scene %s: %d frames, nearest content at %.3f SfM units", scene, n, content)
    data = scene_data_from_arrays(
        rgb, disp, fw, bw, fw_ok, bw_ok, dynamic, cams["K"], cams["c2w"][ids], content
    )
    data.frame_ids = ids
    data.forward_zoom = _forward_zoom(cams["c2w"][ids], depths)
    return data


#: percentile of the SfM points' depths (all training frames) taken as the far content's depth
FAR_PERCENTILE = 90.0


def _forward_zoom(c2w: np.ndarray, point_depths: list[np.ndarray]) -> float | None:
    """:func:`~nsff_core.model.cameras.forward_zoom` of the training cameras at the depth of
    the far SfM points (:data:`FAR_PERCENTILE`); None where no point lies in front."""
    z = np.concatenate([np.asarray(d, np.float64).ravel() for d in point_depths] + [np.zeros(0)])
    z = z[np.isfinite(z) & (z > 0)]
    return forward_zoom(c2w, float(np.percentile(z, FAR_PERCENTILE))) if z.size else None

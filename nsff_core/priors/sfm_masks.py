"""The masks that SfM and the depth prior ignore (rule ``sfm_masks``), at a fixed analysis size.

SfM runs on the source frames (long side capped at ``sfm.max_size``), so its inputs do not
depend on the training size the user picks, except for these masks. Computed from the
training frames' flow, they changed with the training width (different pixels, different
morphology in pixels), SfM then saw different features, and on clips where the reprojection
error barely constrains the focal length the calibration moved with the width: up to 15 %
between widths 320 and 512 on a smooth-textured suite scene. A clip's cameras should not
depend on the output size, so the masks are made here on the source frames scaled to the
long side ``sfm.mask_size`` (never enlarged), with their own flow at that size:

1. the selected source frames (:func:`nsff_core.priors.frames.read_source_frames`) are scaled
   to the analysis size (INTER_AREA) into a temporary folder, with a copy of ``frames.json``
   whose ``size`` is that size (so the pretrained backends, which read the source frames and
   resize their outputs to ``size``, work at it too);
2. the scene's flow backend runs on them (DIS on these frames; RAFT on the source frames,
   resized to the analysis size);
3. the masks backend runs in its SfM mode (:func:`nsff_core.priors.masks.sfm_masks_config`).

The masks are written at the analysis size; :mod:`nsff_core.priors.sfm` and the sparse depth
backend resize them (conservatively: a pixel touching a dynamic one is dynamic) to their own
sizes. The cost is one more flow pass at the analysis size (DIS: about 0.1-0.2 s per pair of
512x288 frames on one core).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
from pathlib import Path

from nsff_core.model.io import frame_name, write_image

from ..config import MIN_FRAME_SIDE, FlowConfig, MasksConfig

log = logging.getLogger(__name__)


def analysis_size(source_wh: tuple[int, int], long_side: int) -> tuple[int, int]:
    """(W, H) of the frames the SfM masks are computed on: ``source_wh`` scaled so that its
    long side is ``long_side``, never enlarged, the short side kept at >= MIN_FRAME_SIDE when
    the source allows it. Sizes are rounded to whole pixels (aspect kept within a pixel)."""
    w, h = (int(v) for v in source_wh)
    s = min(1.0, long_side / max(w, h))
    if min(w, h) * s < MIN_FRAME_SIDE:
        s = min(1.0, MIN_FRAME_SIDE / min(w, h))
    return max(1, round(w * s)), max(1, round(h * s))


def compute_sfm_masks(
    frames_json: str | Path,
    masks_dir: str | Path,
    masks_cfg: MasksConfig,
    flow_cfg: FlowConfig,
    mask_size: int,
    scene: str | None = None,
    *,
    weights: str | Path | None = None,
) -> dict:
    """Write ``masks_dir/{i:05d}.png`` (255 = dynamic) for every selected frame at the analysis
    size (:func:`analysis_size` of the capped source size and ``mask_size``); returns the masks
    summary with ``size`` [W, H] and the flow's summary added.

    Everything but the masks lives in a temporary folder beside ``masks_dir``, which
    :func:`nsff_core.priors.masks.compute_masks` writes atomically."""
    import cv2

    from .flow import compute_flow
    from .frames import read_source_frames
    from .masks import compute_masks, sfm_masks_config
    from .nets.images import SOURCE_MAX_SIZE, capped_size

    info = json.loads(Path(frames_json).read_text())
    size = analysis_size(capped_size(info["source_size"], SOURCE_MAX_SIZE), mask_size)
    Path(masks_dir).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=Path(masks_dir).parent, prefix=".sfm_masks_") as tmp:
        tmp = Path(tmp)
        frames_dir = tmp / "frames"
        frames_dir.mkdir()
        n = 0
        for i, rgb in enumerate(read_source_frames(frames_json, scene=scene, stage="sfm_masks")):
            if rgb.shape[1::-1] != size:
                rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            write_image(frames_dir / frame_name(i), rgb)
            n += 1
        analysis_json = tmp / "frames.json"
        analysis_json.write_text(json.dumps({**info, "size": list(size)}))
        log.info(
            "sfm_masks: %d frames at %dx%d (source %dx%d, sfm.mask_size %d)",
            n,
            *size,
            *info["source_size"],
            mask_size,
        )
        flows = [tmp / "flow_fw", tmp / "flow_bw", tmp / "flow_ok"]
        flow_summary = compute_flow(
            frames_dir,
            *flows,
            dataclasses.replace(flow_cfg, dis_scale="training"),
            scene,
            frames_json=analysis_json,
            weights=weights,
        )
        summary = compute_masks(
            frames_dir,
            *flows,
            masks_dir,
            sfm_masks_config(masks_cfg),
            scene,
            frames_json=analysis_json,
            weights=weights,
        )
    return {**summary, "size": list(size), "flow": flow_summary}

"""What the pretrained prior backends share: RAFT flow, Mask R-CNN / detectron2 masks and DPT
depth (DESIGN.md section 4).

:func:`~nsff_core.priors.flow.compute_flow`, :func:`~nsff_core.priors.masks.compute_masks` and
:func:`~nsff_core.priors.depth.compute_depth` hand a pretrained ``backend`` to their
``pretrained_*`` functions (each in its stage's module, so that a rule's environment only needs
its own backend's packages). These read the source frames at source resolution (capped at 1280x720, as nsff_pl) through
``frames.json``, take the checkpoint from the scene's ``weights.json`` marker (written by the
rule ``weights``; nothing is downloaded here, so GPU and cluster jobs never touch the network),
and write the same files as the weights-free backends, at training resolution.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from ..errors import StageError

#: backends that need a checkpoint, per stage
PRETRAINED = {"flow": {"raft"}, "masks": {"maskrcnn", "detectron2"}, "depth": {"dpt"}}


def is_pretrained(stage: str, backend: str) -> bool:
    return backend in PRETRAINED.get(stage, set())


def require(value: Any, what: str, stage: str, scene: str | None) -> None:
    if value is None:
        raise StageError(
            scene,
            stage,
            f"the pretrained backend needs {what}",
            "run it through the workflow (its rule passes frames.json and weights.json)",
        )


def training_hw(frames_json: str | Path) -> tuple[int, int]:
    w, h = json.loads(Path(frames_json).read_text())["size"]
    return int(h), int(w)


def source_frames(frames_json: str | Path, stage: str, scene: str | None):
    from .frames import read_source_frames

    return read_source_frames(frames_json, scene=scene, stage=stage)


def checkpoint(weights: str | Path, name: str, stage: str, scene: str | None) -> Path:
    from .weights import resolve_from_marker

    return resolve_from_marker(weights, name, scene, stage)


def fp16_autocast(device: Any, enabled: bool):
    """float16 autocast on ``device`` (a torch.device) when ``enabled``, else a no-op context.

    The CUDA inference paths of RAFT, DPT and Mask R-CNN share it.
    """
    if not enabled:
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device.type, dtype=torch.float16)


def _brief(exc: BaseException, limit: int = 300) -> str:
    """One line of at most ``limit`` characters from an exception's message."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load_state_dict_file(
    model: Any,
    checkpoint: str | Path,
    what: str,
    missing_hint: str,
    wrong_hint: str,
    stage: str,
    scene: str | None = None,
) -> None:
    """Load a torch state-dict file into ``model`` strictly; a missing file, an unreadable one
    or one with other keys or shapes is a :class:`StageError` naming ``what`` and the path."""
    import torch

    path = Path(checkpoint)
    if not path.is_file():
        raise StageError(scene, stage, f"{what} checkpoint not found: {path}", missing_hint)
    try:
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    except Exception as exc:  # unreadable file, foreign pickle, other keys or shapes
        raise StageError(
            scene, stage, f"{path} is not a {what} state dict ({_brief(exc)})", wrong_hint
        ) from exc

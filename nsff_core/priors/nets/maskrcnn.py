"""Semantic motion masks from COCO Mask R-CNN: the pretrained backends of the ``masks`` stage.

Output as the ``epipolar`` backend: ``masks/{i:05d}.png``, 8-bit, 255 = dynamic, at training
resolution, dilated.

Per frame, every detected instance of a configured ("dynamic") COCO class whose score reaches
the threshold is a candidate (mask probability > 0.5); its mask is resized to the training
resolution (nearest). With weights-free motion masks of the same frames (``motion``), a
candidate is kept only when at least ``min_moving_fraction`` of its pixels move: a person who
sits still in a cafe is part of the static scene, not a mover. The kept instances are united,
dilated by ``dilate_px`` pixels (a disk, as the epipolar backend's final dilation) and, with
``union_motion``, OR-ed with the motion mask, which catches movers outside the COCO classes
(NSFF's original ``motion_masks`` were such a union).

Backends:

- ``maskrcnn``: torchvision's Mask R-CNN ResNet-50-FPN v2 (COCO_V1 weights, file
  ``maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth``; box mAP 47.4, mask mAP 41.8);
- ``detectron2``: detectron2's R50-FPN 3x from its model zoo (nsff_pl's model), when detectron2
  is installed.

Classes are COCO names (:data:`COCO_CLASSES`) or the groups of :data:`CLASS_GROUPS`; the default
is people, animals and vehicles. nsff_pl's defaults differ: {person, book, remote, parking meter}
at a score threshold of 0.05. Here the threshold defaults to 0.5, as in the original NSFF: at
0.05 low-confidence false positives (reflections, posters, parked-car fragments) cover static
background, which the SfM and the static field then never see, and the motion union is the
safety net for the movers a higher threshold misses.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence, Sized
from pathlib import Path
from typing import Any

import numpy as np

from nsff_core.errors import ConfigError, StageError
from nsff_core.model.io import (
    atomic_dir,
    frame_name,
    list_frames,
    read_image,
    read_mask,
    write_mask,
)
from nsff_core.progress import Progress

from .pretrained import fp16_autocast, load_state_dict_file

log = logging.getLogger(__name__)

STAGE = "masks"

#: torchvision's 91 COCO labels (index = label id of its detection models; "N/A" = unused ids),
#: equal to ``MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1.meta["categories"]``
# fmt: off
TORCHVISION_COCO_CATEGORIES: tuple[str, ...] = (
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train",
    "truck", "boat", "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter",
    "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
    "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A", "handbag", "tie", "suitcase",
    "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove",
    "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot",
    "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "N/A",
    "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A",
    "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
# fmt: on

#: the 80 COCO object classes; the index is detectron2's contiguous class id
COCO_CLASSES: tuple[str, ...] = tuple(
    c for c in TORCHVISION_COCO_CATEGORIES if c not in ("__background__", "N/A")
)

#: names that stand for several classes in ``masks.classes``
CLASS_GROUPS: dict[str, tuple[str, ...]] = {
    "people": ("person",),
    "animals": (
        "bird",
        "cat",
        "dog",
        "horse",
        "sheep",
        "cow",
        "elephant",
        "bear",
        "zebra",
        "giraffe",
    ),
    "vehicles": (
        "bicycle",
        "car",
        "motorcycle",
        "airplane",
        "bus",
        "train",
        "truck",
        "boat",
    ),
}

#: people, animals and vehicles
DEFAULT_DYNAMIC_CLASSES: tuple[str, ...] = (
    CLASS_GROUPS["people"] + CLASS_GROUPS["animals"] + CLASS_GROUPS["vehicles"]
)
DEFAULT_SCORE_THRESHOLD = 0.5
DEFAULT_DILATE_PX = 3

MASKRCNN_CHECKPOINT_NAME = "maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth"
MASKRCNN_CHECKPOINT_URL = "https://download.pytorch.org/models/" + MASKRCNN_CHECKPOINT_NAME
DETECTRON2_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
DETECTRON2_INSTALL_HINT = (
    "install detectron2 (no PyPI wheels; needs a C++ compiler and torch already installed): "
    "pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git'; "
    "or set masks.backend to 'maskrcnn' (torchvision's Mask R-CNN, same COCO classes)"
)


# --------------------------------------------------------------------------- classes


def resolve_classes(names: Iterable[str] | str) -> tuple[str, ...]:
    """COCO class names of ``names`` (names or :data:`CLASS_GROUPS` keys), in order, no repeats.

    Raises :class:`ConfigError` naming the unknown entries and listing the valid ones.
    Example: ``["people", "dog", "person"]`` -> ``("person", "dog")``.
    """
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    unknown: list[str] = []
    for name in names:
        key = str(name).strip().lower()
        if key in CLASS_GROUPS:
            out += CLASS_GROUPS[key]
        elif key in COCO_CLASSES:
            out.append(key)
        else:
            unknown.append(str(name))
    if unknown:
        raise ConfigError(
            f"unknown COCO class name(s) in masks.classes: {unknown}. Valid groups: "
            f"{sorted(CLASS_GROUPS)}; valid names: {', '.join(COCO_CLASSES)}"
        )
    if not out:
        raise ConfigError("masks.classes is empty: name at least one COCO class or group")
    return tuple(dict.fromkeys(out))


def torchvision_label_ids(names: Iterable[str]) -> frozenset[int]:
    """torchvision detection label ids of COCO class names (e.g. person -> 1, dog -> 18)."""
    return frozenset(TORCHVISION_COCO_CATEGORIES.index(n) for n in resolve_classes(names))


def detectron2_label_ids(names: Iterable[str]) -> frozenset[int]:
    """detectron2 contiguous class ids of COCO class names (e.g. person -> 0, dog -> 16)."""
    return frozenset(COCO_CLASSES.index(n) for n in resolve_classes(names))


# --------------------------------------------------------------------------- mask algebra


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def kept_instances(labels, scores, classes: Iterable[int], score_threshold: float) -> np.ndarray:
    """Indices of the instances whose label is in ``classes`` and score >= the threshold."""
    labels = _to_numpy(labels).reshape(-1).astype(np.int64)
    scores = _to_numpy(scores).reshape(-1).astype(np.float64)
    ids = np.fromiter((int(c) for c in classes), dtype=np.int64)
    return np.nonzero(np.isin(labels, ids) & (scores >= score_threshold))[0]


def instance_masks(
    labels,
    scores,
    masks,
    classes: Iterable[int],
    score_threshold: float,
    mask_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """The kept instances and their bool masks.

    Args:
        labels, scores: (N,) label ids and scores (numpy or torch).
        masks: (N, H, W) or (N, 1, H, W) mask probabilities or bools (numpy or torch).
        classes: label ids to keep (same label space as ``labels``).
        score_threshold: keep instances with score >= this.
        mask_threshold: a pixel belongs to an instance where its mask is > this.

    Returns:
        ``(keep, m)``: (K,) int64 indices of the kept instances into the N, and (K, H, W) bool
        numpy masks of them (thresholded on the masks' device, then copied).
    """
    h, w = masks.shape[-2:]
    keep = kept_instances(labels, scores, classes, score_threshold)
    if keep.size == 0:
        return keep, np.zeros((0, h, w), bool)
    if hasattr(masks, "detach"):
        import torch

        sel = masks[torch.as_tensor(keep, device=masks.device)]
    else:
        sel = np.asarray(masks)[keep]
    return keep, _to_numpy((sel > mask_threshold).reshape(-1, h, w)).astype(bool)


def instances_to_mask(
    labels,
    scores,
    masks,
    classes: Iterable[int],
    score_threshold: float,
    mask_threshold: float = 0.5,
) -> np.ndarray:
    """Union (H, W) bool of the kept instances' masks (arguments as :func:`instance_masks`)."""
    _, sel = instance_masks(labels, scores, masks, classes, score_threshold, mask_threshold)
    return sel.any(0)


def moving_fraction(instance: np.ndarray, motion: np.ndarray) -> float:
    """Fraction of an instance's pixels that are moving: |instance & motion| / |instance|.

    Both are bool (H, W) at the same resolution; an empty instance has fraction 0.
    """
    area = int(np.count_nonzero(instance))
    return float(np.count_nonzero(instance & motion)) / area if area else 0.0


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    """Grow a bool mask by ``px`` pixels (a disk of diameter 2 px + 1, as the epipolar backend)."""
    if px <= 0:
        return np.asarray(mask, bool).copy()
    import cv2

    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.dilate(np.asarray(mask, np.uint8), k).astype(bool)


def resize_mask(mask: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a bool (H, W) mask to ``out_hw = (H', W')``."""
    if mask.shape == tuple(out_hw):
        return mask
    import cv2

    m = cv2.resize(mask.astype(np.uint8), (out_hw[1], out_hw[0]), interpolation=cv2.INTER_NEAREST)
    return m.astype(bool)


# --------------------------------------------------------------------------- torchvision


def _resolve_device(device: Any = None):
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cpu":
        log.warning("running Mask R-CNN on the CPU: expect seconds per frame")
    return device


def load_maskrcnn(checkpoint: str | Path | None, device: Any = None, scene: str | None = None):
    """torchvision Mask R-CNN ResNet-50-FPN v2 (91 COCO labels) in eval mode on ``device``.

    ``checkpoint`` is torchvision's COCO_V1 state dict, loaded strictly; ``None`` keeps the
    random initialisation (tests only). Nothing is downloaded.
    """
    from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

    model = maskrcnn_resnet50_fpn_v2(
        weights=None, weights_backbone=None, num_classes=len(TORCHVISION_COCO_CATEGORIES)
    )
    if checkpoint is None:
        log.warning("Mask R-CNN: no checkpoint given, using RANDOM weights (masks meaningless)")
    else:
        load_state_dict_file(
            model,
            checkpoint,
            "torchvision Mask R-CNN v2",
            f"put torchvision's {MASKRCNN_CHECKPOINT_NAME} ({MASKRCNN_CHECKPOINT_URL}) there, "
            "or set masks.backend to 'epipolar' (weights-free)",
            f"use torchvision's {MASKRCNN_CHECKPOINT_NAME}",
            STAGE,
            scene,
        )
    return model.eval().to(_resolve_device(device) if device is None else device)


def _model_device(model):
    return next(model.parameters()).device


def predict_instances(
    model,
    rgbs: Sequence[np.ndarray],
    classes: Iterable[int],
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    mask_threshold: float = 0.5,
    amp: bool | None = None,
) -> list[tuple[np.ndarray, list[int]]]:
    """Instances of RGB uint8 images with a torchvision Mask R-CNN, in one batch.

    Returns per image the (K, H, W) bool masks of the kept instances (configured ``classes``,
    score >= ``score_threshold``; at the image's size) and their K label ids. ``classes`` are
    torchvision label ids. ``amp`` (float16 autocast) defaults to on for CUDA.
    """
    import torch

    device = _model_device(model)
    amp = device.type == "cuda" if amp is None else amp
    classes = frozenset(int(c) for c in classes)
    imgs = [
        torch.from_numpy(np.ascontiguousarray(r)).to(device).permute(2, 0, 1).float() / 255.0
        for r in rgbs
    ]
    out = []
    with torch.inference_mode(), fp16_autocast(device, amp):
        preds = model(imgs)
    for p in preds:
        keep, masks = instance_masks(
            p["labels"], p["scores"], p["masks"], classes, score_threshold, mask_threshold
        )
        out.append((masks, [int(v) for v in _to_numpy(p["labels"]).reshape(-1)[keep]]))
    return out


def predict_masks(
    model,
    rgbs: Sequence[np.ndarray],
    classes: Iterable[int],
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    mask_threshold: float = 0.5,
    amp: bool | None = None,
) -> list[tuple[np.ndarray, list[int]]]:
    """Dynamic masks of RGB uint8 images with a torchvision Mask R-CNN, in one batch.

    Returns per image the bool (H, W) union of the kept instances (at the image's size) and the
    kept instances' label ids (see :func:`predict_instances`).
    """
    res = predict_instances(model, rgbs, classes, score_threshold, mask_threshold, amp)
    return [(masks.any(0), labels) for masks, labels in res]


# --------------------------------------------------------------------------- the stage


def _frame_items(frames) -> list | Iterable:
    if isinstance(frames, (str, Path)):
        return list_frames(frames)
    return frames


def _load_frame(item) -> np.ndarray:
    return item if isinstance(item, np.ndarray) else read_image(item, made_by="frames")


def _motion_hint(scene: str | None) -> str:
    return (
        "recompute the motion masks from this scene's flow at the training resolution: rerun "
        "the 'flow' and 'masks' rules for this scene (snakemake --forcerun flow "
        f"results/{scene or '<scene>'}/masks)"
    )


def _resolve_motion(motion, union_with, union_motion: bool, min_moving_fraction: float):
    """``(motion, union_motion)`` after folding the older ``union_with`` argument in.

    ``union_with=X`` is ``motion=X, union_motion=True``; the two cannot be given together.
    """
    if union_with is not None:
        if motion is not None:
            raise ValueError("give motion (with union_motion=True) or union_with, not both")
        motion, union_motion = union_with, True
    if not 0.0 <= float(min_moving_fraction) <= 1.0:
        raise ValueError(f"min_moving_fraction must be in [0, 1], got {min_moving_fraction}")
    if union_motion and motion is None:
        raise ValueError("union_motion=True needs the motion masks (motion=...)")
    return motion, bool(union_motion)


def _motion_mask(motion, i: int, out_hw: tuple[int, int], scene: str | None) -> np.ndarray:
    """Motion mask of frame ``i`` (bool (H, W) at ``out_hw``) from a folder or a sequence."""
    if isinstance(motion, (str, Path)):
        path = Path(motion) / frame_name(i)
        if not path.is_file():
            raise StageError(
                scene, STAGE, f"motion mask {path} of frame {i} is missing", _motion_hint(scene)
            )
        m = read_mask(path)
    else:
        if i >= len(motion):
            raise StageError(
                scene,
                STAGE,
                f"{len(motion)} motion mask(s) for the instance filter but frame {i} exists",
                _motion_hint(scene),
            )
        m = np.asarray(motion[i], bool)
    if m.shape != tuple(out_hw):
        raise StageError(
            scene,
            STAGE,
            f"motion mask {i} is {m.shape[1]}x{m.shape[0]}, the training resolution "
            f"{out_hw[1]}x{out_hw[0]}",
            _motion_hint(scene),
        )
    return m


def _count_motion_masks(motion) -> int:
    if isinstance(motion, (str, Path)):
        return len(list(Path(motion).glob("*.png")))
    return len(motion)


def _run_masks(
    frames,
    masks_dir: str | Path,
    out_hw: tuple[int, int],
    predict: Callable[[list[np.ndarray]], list[tuple[np.ndarray, list[str]]]],
    batch_size: int,
    dilate_px: int,
    motion,
    min_moving_fraction: float,
    union_motion: bool,
    scene: str | None,
    summary: dict,
) -> dict:
    """Shared loop: predict per batch, resize each instance, keep the moving ones, unite,
    dilate, unite with the motion mask, write; fills ``summary``.

    ``predict`` maps a batch of RGB uint8 images to, per image, the (K, H, W) bool masks of its
    candidate instances at the image's size and their K class names. ``motion`` is None or a
    folder / sequence of bool masks at ``out_hw``, one per frame (see :func:`_motion_mask`).
    """
    out_hw = (int(out_hw[0]), int(out_hw[1]))
    # the motion masks are read only where they are used
    filter_on = motion is not None and min_moving_fraction > 0
    use_motion = motion is not None and (filter_on or union_motion)
    t0 = time.perf_counter()
    semantic, moving, final = [], [], []
    detected: Counter[str] = Counter()
    kept: Counter[str] = Counter()
    n = 0
    frames = _frame_items(frames)
    # done/total and an ETA at least every 30 s (no total for a generator of frames)
    total = len(frames) if isinstance(frames, Sized) else None
    progress = Progress(f"masks ({summary['backend']}): frame", total, log)
    with atomic_dir(masks_dir) as out:

        def flush(batch: list[np.ndarray]) -> None:
            nonlocal n
            for inst, names in predict(batch):
                mot = _motion_mask(motion, n, out_hw, scene) if use_motion else None
                union = np.zeros(out_hw, bool)
                for m, name in zip(inst, names, strict=True):
                    # measured on the instance's own pixels, before the dilation: the added
                    # ring is background, whose motion says nothing about the instance
                    m = resize_mask(np.asarray(m, bool), out_hw)
                    detected[name] += 1
                    if filter_on:
                        frac = moving_fraction(m, mot)
                        log.debug("masks: frame %d %s moving fraction %.3f", n, name, frac)
                        if frac < min_moving_fraction:
                            continue
                    kept[name] += 1
                    union |= m
                m = dilate(union, dilate_px)
                semantic.append(float(m.mean()))
                if union_motion:
                    moving.append(float(mot.mean()))
                    m = m | mot
                write_mask(out / frame_name(n), m)
                final.append(float(m.mean()))
                n += 1
            progress.update(n)

        batch: list[np.ndarray] = []
        for item in frames:
            batch.append(_load_frame(item))
            if len(batch) == batch_size:
                flush(batch)
                batch = []
        if batch:
            flush(batch)
        if n == 0:
            raise StageError(
                scene, STAGE, "no frames to mask", "rerun the 'frames' rule for this scene"
            )
        if use_motion and _count_motion_masks(motion) > n:
            raise StageError(
                scene,
                STAGE,
                f"{n} frames but {_count_motion_masks(motion)} motion masks",
                _motion_hint(scene),
            )
    dropped = detected - kept
    summary.update(
        frames=n,
        mean_semantic_fraction=float(np.mean(semantic)),
        mean_motion_fraction=float(np.mean(moving)) if moving else None,
        mean_dynamic_fraction=float(np.mean(final)),
        min_moving_fraction=float(min_moving_fraction) if filter_on else 0.0,
        instances_detected=dict(sorted(detected.items())),
        instances_kept=dict(sorted(kept.items())),
        instances_dropped_static=dict(sorted(dropped.items())),
        instances=dict(sorted(kept.items())),  # older name of instances_kept
        union_motion=union_motion,
        seconds=time.perf_counter() - t0,
    )
    if filter_on:
        log.info(
            "masks (%s): kept %d of %d instance(s); dropped %d as static (fewer than %.0f%% of "
            "their pixels moving)%s",
            summary["backend"],
            kept.total(),
            detected.total(),
            dropped.total(),
            100 * min_moving_fraction,
            (": " + ", ".join(f"{k} {v}" for k, v in sorted(dropped.items()))) if dropped else "",
        )
    else:
        log.info(
            "masks (%s): kept all %d instance(s) (no motion filter)",
            summary["backend"],
            detected.total(),
        )
    log.info("masks (%s): done %s", summary["backend"], summary)
    return summary


def _classes_or_error(classes, scene: str | None) -> tuple[str, ...]:
    try:
        return resolve_classes(classes)
    except ConfigError as exc:
        raise StageError(
            scene, STAGE, str(exc), "fix masks.classes (config or scene sheet)"
        ) from exc


def compute_masks_maskrcnn(
    frames: str | Path | Iterable[np.ndarray | str | Path],
    masks_dir: str | Path,
    out_hw: tuple[int, int],
    classes: Iterable[str] = DEFAULT_DYNAMIC_CLASSES,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    dilate_px: int = DEFAULT_DILATE_PX,
    checkpoint: str | Path | None = None,
    device: Any = None,
    union_with: str | Path | Sequence[np.ndarray] | None = None,
    mask_threshold: float = 0.5,
    batch_size: int | None = None,
    scene: str | None = None,
    model=None,
    *,
    motion: str | Path | Sequence[np.ndarray] | None = None,
    min_moving_fraction: float = 0.0,
    union_motion: bool = False,
) -> dict:
    """Write ``masks_dir/{i:05d}.png`` (255 = dynamic) from torchvision's Mask R-CNN.

    Args:
        frames: the frames in time order (any resolution): a folder of PNGs or an iterable of
            RGB uint8 arrays or paths.
        masks_dir: output folder, replaced atomically.
        out_hw: training resolution (H, W) of the written masks.
        classes: COCO class names or groups (:func:`resolve_classes`).
        score_threshold: keep instances with a score >= this.
        dilate_px: dilation at training resolution, in pixels.
        checkpoint: torchvision COCO_V1 state dict (:func:`load_maskrcnn`).
        device: torch device; default CUDA when available, else CPU.
        union_with: older form of ``motion=..., union_motion=True`` (not with ``motion``).
        batch_size: images per network call; default 4 on CUDA, 1 on the CPU.
        model: an already loaded model (skips :func:`load_maskrcnn`).
        motion: weights-free motion masks at training resolution (255 / True = moving): a
            folder of ``{i:05d}.png`` or a sequence of bool (H, W) arrays, one per frame.
            None turns the instance filter off.
        min_moving_fraction: keep an instance (its mask resized to the training resolution,
            before the dilation) when at least this fraction of its pixels moves in
            ``motion``; 0 keeps every instance.
        union_motion: OR the motion mask into the written mask, after the dilation.

    Returns:
        A summary: frames, instances_detected / instances_kept / instances_dropped_static
        (counts per class name), mean_semantic_fraction (kept instances, dilated),
        mean_motion_fraction, mean_dynamic_fraction (what was written), seconds, settings.

    Raises:
        StageError: unknown classes, bad weights, no frames, or motion masks missing, of
            another size or more than the frames (nothing is written then).
    """
    motion, union_motion = _resolve_motion(motion, union_with, union_motion, min_moving_fraction)
    names = _classes_or_error(classes, scene)
    ids = torchvision_label_ids(names)
    if model is None:
        model = load_maskrcnn(checkpoint, _resolve_device(device), scene)
    device = _model_device(model)
    if batch_size is None:
        batch_size = 4 if device.type == "cuda" else 1
    # boxes below the threshold never reach the mask head and the pasting (the model's own
    # default is 0.05; the threshold is applied again in instance_masks)
    model.roi_heads.score_thresh = score_threshold

    def predict(batch):
        res = predict_instances(model, batch, ids, score_threshold, mask_threshold)
        return [(m, [TORCHVISION_COCO_CATEGORIES[i] for i in labels]) for m, labels in res]

    summary = {
        "backend": "maskrcnn",
        "classes": list(names),
        "score_threshold": score_threshold,
        "dilate_px": dilate_px,
        "device": str(device),
    }
    return _run_masks(
        frames,
        masks_dir,
        out_hw,
        predict,
        batch_size,
        dilate_px,
        motion,
        min_moving_fraction,
        union_motion,
        scene,
        summary,
    )


# --------------------------------------------------------------------------- detectron2


def require_detectron2(scene: str | None = None) -> None:
    """Raise a :class:`StageError` that says how to install detectron2 when it is missing."""
    try:
        import detectron2  # noqa: F401
    except ImportError as exc:
        raise StageError(
            scene,
            STAGE,
            "masks.backend is 'detectron2' but the detectron2 package is not installed",
            DETECTRON2_INSTALL_HINT,
        ) from exc


def load_detectron2(
    checkpoint: str | Path | None,
    device: Any = None,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    scene: str | None = None,
):
    """detectron2's ``DefaultPredictor`` for Mask R-CNN R50-FPN 3x (COCO).

    ``checkpoint`` is the model zoo's ``model_final_f10217.pkl``; ``None`` lets detectron2 fetch
    it from its model zoo into its own cache. detectron2 itself would read the ``.pkl`` with
    :func:`pickle.load`, which runs whatever code the file names: the predictor is built without
    weights instead, and :func:`_detectron2_checkpointer` loads them after the sha256 check,
    with an unpickler that builds numpy arrays and containers only.
    """
    require_detectron2(scene)
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.engine import DefaultPredictor

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file(DETECTRON2_CONFIG))
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise StageError(
            scene,
            STAGE,
            f"detectron2 checkpoint not found: {checkpoint}",
            f"put {model_zoo.get_checkpoint_url(DETECTRON2_CONFIG)} there",
        )
    source = (
        str(checkpoint)
        if checkpoint is not None
        else model_zoo.get_checkpoint_url(DETECTRON2_CONFIG)
    )
    cfg.MODEL.WEIGHTS = ""  # DefaultPredictor loads nothing ("initializing from scratch")
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = float(score_threshold)
    cfg.MODEL.DEVICE = str(_resolve_device(device))
    predictor = DefaultPredictor(cfg)
    _detectron2_checkpointer(predictor.model, scene).load(source)
    predictor.cfg.MODEL.WEIGHTS = source  # what was loaded, for whoever reads the config
    return predictor


def _detectron2_checkpointer(model, scene: str | None):
    """A detectron2 ``DetectionCheckpointer`` for ``model`` that reads files safely.

    Its ``_load_file`` (fvcore's hook for file formats) opens the local file through
    :func:`~nsff_core.priors.weights.hashing.open_verified` (registry or recorded sha256) and
    reads a ``.pkl`` with :func:`~nsff_core.priors.nets.pretrained.load_pickled_arrays` instead of
    ``pickle.load``; model-zoo and Caffe2-style contents are told apart as detectron2 does. Any
    other file goes through ``torch.load(weights_only=True)``.
    """
    import pickle

    from detectron2 import model_zoo
    from detectron2.checkpoint import DetectionCheckpointer

    from nsff_core.priors.weights.hashing import open_verified

    from .pretrained import load_pickled_arrays, torch_load_weights

    def refuse(filename: str, exc: BaseException) -> StageError:
        return StageError(
            scene,
            STAGE,
            f"{filename} is not a detectron2 checkpoint of arrays ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]})",
            f"use the model zoo's file ({model_zoo.get_checkpoint_url(DETECTRON2_CONFIG)}); "
            "a file that needs other Python objects is never unpickled",
        )

    class NoPickleCheckpointer(DetectionCheckpointer):
        def _load_file(self, filename):
            if not filename.endswith(".pkl"):
                try:
                    loaded = torch_load_weights(filename, scene, STAGE)
                except StageError:
                    raise
                except Exception as exc:
                    raise refuse(filename, exc) from exc
                loaded = loaded if "model" in loaded else {"model": loaded}
                loaded["matching_heuristics"] = True
                return loaded
            with open_verified(filename, scene, STAGE) as f:
                try:
                    data = load_pickled_arrays(f)
                except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as exc:
                    raise refuse(filename, exc) from exc
            if not isinstance(data, dict):
                raise refuse(filename, TypeError(f"it holds a {type(data).__name__}"))
            if "model" in data and "__author__" in data:  # detectron2 model-zoo format
                return data
            # a Caffe2 / Detectron1 file, converted by name matching as detectron2 does
            if "blobs" in data:
                data = data["blobs"]
            model_data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": model_data, "__author__": "Caffe2", "matching_heuristics": True}

    return NoPickleCheckpointer(model)


def compute_masks_detectron2(
    frames: str | Path | Iterable[np.ndarray | str | Path],
    masks_dir: str | Path,
    out_hw: tuple[int, int],
    classes: Iterable[str] = DEFAULT_DYNAMIC_CLASSES,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    dilate_px: int = DEFAULT_DILATE_PX,
    checkpoint: str | Path | None = None,
    device: Any = None,
    union_with: str | Path | Sequence[np.ndarray] | None = None,
    scene: str | None = None,
    *,
    motion: str | Path | Sequence[np.ndarray] | None = None,
    min_moving_fraction: float = 0.0,
    union_motion: bool = False,
    predictor=None,
) -> dict:
    """As :func:`compute_masks_maskrcnn`, with detectron2's R50-FPN 3x (one frame per call).

    ``predictor``: an already loaded ``DefaultPredictor`` (skips :func:`load_detectron2`).
    """
    motion, union_motion = _resolve_motion(motion, union_with, union_motion, min_moving_fraction)
    names = _classes_or_error(classes, scene)
    ids = detectron2_label_ids(names)
    if predictor is None:
        require_detectron2(scene)
        predictor = load_detectron2(checkpoint, device, score_threshold, scene)

    def predict(batch):
        out = []
        for rgb in batch:
            inst = predictor(np.ascontiguousarray(rgb[..., ::-1]))["instances"]  # BGR input
            labels = inst.pred_classes
            keep, masks = instance_masks(labels, inst.scores, inst.pred_masks, ids, score_threshold)
            out.append((masks, [COCO_CLASSES[int(i)] for i in _to_numpy(labels).reshape(-1)[keep]]))
        return out

    summary = {
        "backend": "detectron2",
        "classes": list(names),
        "score_threshold": score_threshold,
        "dilate_px": dilate_px,
        "device": str(predictor.cfg.MODEL.DEVICE),
    }
    return _run_masks(
        frames,
        masks_dir,
        out_hw,
        predict,
        1,
        dilate_px,
        motion,
        min_moving_fraction,
        union_motion,
        scene,
        summary,
    )

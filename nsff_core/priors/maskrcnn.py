"""Semantic motion masks from COCO Mask R-CNN: the pretrained backends of the ``masks`` stage.

Output as the ``epipolar`` backend (DESIGN.md section 3): ``masks/{i:05d}.png``, 8-bit, 255 =
dynamic, at training resolution, dilated.

Per frame, every detected instance of a configured ("dynamic") COCO class whose score reaches
the threshold is kept; the union of the kept instance masks (mask probability > 0.5) is resized
to the training resolution (nearest), dilated by ``dilate_px`` pixels (a disk, as the epipolar
backend's final dilation) and optionally OR-ed with the epipolar masks of the same frame, which
catch movers outside the COCO classes (NSFF's original ``motion_masks`` were such a union).

Backends:

- ``maskrcnn``: torchvision's Mask R-CNN ResNet-50-FPN v2 (COCO_V1 weights, file
  ``maskrcnn_resnet50_fpn_v2_coco-73cbd019.pth``; box mAP 47.4, mask mAP 41.8);
- ``detectron2``: detectron2's R50-FPN 3x from its model zoo (nsff_pl's model), when detectron2
  is installed.

Classes are COCO names (:data:`COCO_CLASSES`) or the groups of :data:`CLASS_GROUPS`; the default
is people, animals and vehicles. nsff_pl's defaults differ (NSFF_SPEC.md 1.2 step 2): {person,
book, remote, parking meter} at a score threshold of 0.05. Here the threshold defaults to 0.5, as
in the original NSFF: at 0.05 low-confidence false positives (reflections, posters, parked-car
fragments) cover static background, which the SfM and the static field then never see, and the
epipolar union is the safety net for the movers a higher threshold misses.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, StageError
from ..io import atomic_dir, frame_name, list_frames, read_image, read_mask, write_mask
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


def instances_to_mask(
    labels,
    scores,
    masks,
    classes: Iterable[int],
    score_threshold: float,
    mask_threshold: float = 0.5,
) -> np.ndarray:
    """Union (H, W) bool of the kept instances' masks.

    Args:
        labels, scores: (N,) label ids and scores (numpy or torch).
        masks: (N, H, W) or (N, 1, H, W) mask probabilities or bools (numpy or torch).
        classes: label ids to keep (same label space as ``labels``).
        score_threshold: keep instances with score >= this.
        mask_threshold: a pixel belongs to an instance where its mask is > this.
    """
    h, w = masks.shape[-2:]
    keep = kept_instances(labels, scores, classes, score_threshold)
    if keep.size == 0:
        return np.zeros((h, w), bool)
    if hasattr(masks, "detach"):
        import torch

        sel = masks[torch.as_tensor(keep, device=masks.device)]
    else:
        sel = np.asarray(masks)[keep]
    union = (sel > mask_threshold).reshape(-1, h, w).any(0)
    return _to_numpy(union).astype(bool)


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
    kept instances' label ids. ``classes`` are torchvision label ids. ``amp`` (float16 autocast)
    defaults to on for CUDA.
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
        keep = kept_instances(p["labels"], p["scores"], classes, score_threshold)
        mask = instances_to_mask(
            p["labels"], p["scores"], p["masks"], classes, score_threshold, mask_threshold
        )
        out.append((mask, [int(v) for v in _to_numpy(p["labels"])[keep]]))
    return out


def predict_mask(
    model,
    rgb: np.ndarray,
    classes: Iterable[int],
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    mask_threshold: float = 0.5,
) -> np.ndarray:
    """Dynamic bool (H, W) mask of one RGB uint8 image (see :func:`predict_masks`)."""
    return predict_masks(model, [rgb], classes, score_threshold, mask_threshold)[0][0]


# --------------------------------------------------------------------------- the stage


def _frame_items(frames) -> list | Iterable:
    if isinstance(frames, (str, Path)):
        return list_frames(frames)
    return frames


def _load_frame(item) -> np.ndarray:
    return item if isinstance(item, np.ndarray) else read_image(item, made_by="frames")


def _union_mask(union_with, i: int, out_hw: tuple[int, int], scene: str | None) -> np.ndarray:
    if isinstance(union_with, (str, Path)):
        path = Path(union_with) / frame_name(i)
        if not path.is_file():
            raise StageError(
                scene,
                STAGE,
                f"epipolar mask {path} is missing for the union",
                "recompute the epipolar masks for this scene's frames",
            )
        m = read_mask(path)
    else:
        if i >= len(union_with):
            raise StageError(
                scene,
                STAGE,
                f"{len(union_with)} epipolar mask(s) for the union but frame {i} exists",
                "recompute the epipolar masks for this scene's frames",
            )
        m = np.asarray(union_with[i], bool)
    if m.shape != tuple(out_hw):
        raise StageError(
            scene,
            STAGE,
            f"epipolar mask {i} is {m.shape[1]}x{m.shape[0]}, the training resolution "
            f"{out_hw[1]}x{out_hw[0]}",
            "recompute the epipolar masks from this scene's flow",
        )
    return m


def _run_masks(
    frames,
    masks_dir: str | Path,
    out_hw: tuple[int, int],
    predict: Callable[[list[np.ndarray]], list[tuple[np.ndarray, list[str]]]],
    batch_size: int,
    dilate_px: int,
    union_with,
    scene: str | None,
    summary: dict,
) -> dict:
    """Shared loop: predict per batch, resize, dilate, union, write; fills ``summary``."""
    out_hw = (int(out_hw[0]), int(out_hw[1]))
    t0 = time.perf_counter()
    semantic, final = [], []
    counts: Counter[str] = Counter()
    n = 0
    with atomic_dir(masks_dir) as out:

        def flush(batch: list[np.ndarray]) -> None:
            nonlocal n
            for mask, names in predict(batch):
                m = dilate(resize_mask(mask, out_hw), dilate_px)
                semantic.append(float(m.mean()))
                counts.update(names)
                if union_with is not None:
                    m = m | _union_mask(union_with, n, out_hw, scene)
                write_mask(out / frame_name(n), m)
                final.append(float(m.mean()))
                n += 1
            log.info(
                "masks (%s): %d frame(s) (%.1f s)", summary["backend"], n, time.perf_counter() - t0
            )

        batch: list[np.ndarray] = []
        for item in _frame_items(frames):
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
        if isinstance(union_with, (str, Path)):
            extra = len(list(Path(union_with).glob("*.png"))) - n
        else:
            extra = 0 if union_with is None else len(union_with) - n
        if extra > 0:
            raise StageError(
                scene,
                STAGE,
                f"{n} frames but {n + extra} epipolar masks for the union",
                "recompute the epipolar masks for this scene's frames",
            )
    summary.update(
        frames=n,
        mean_semantic_fraction=float(np.mean(semantic)),
        mean_dynamic_fraction=float(np.mean(final)),
        instances=dict(sorted(counts.items())),
        union_epipolar=union_with is not None,
        seconds=time.perf_counter() - t0,
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
        union_with: epipolar masks at training resolution to OR in after the dilation: a folder
            of ``{i:05d}.png`` or a sequence of bool arrays, one per frame.
        batch_size: images per network call; default 4 on CUDA, 1 on the CPU.
        model: an already loaded model (skips :func:`load_maskrcnn`).
    """
    names = _classes_or_error(classes, scene)
    ids = torchvision_label_ids(names)
    if model is None:
        model = load_maskrcnn(checkpoint, _resolve_device(device), scene)
    device = _model_device(model)
    if batch_size is None:
        batch_size = 4 if device.type == "cuda" else 1
    # boxes below the threshold never reach the mask head and the pasting (the model's own
    # default is 0.05; the threshold is applied again in instances_to_mask)
    model.roi_heads.score_thresh = score_threshold

    def predict(batch):
        res = predict_masks(model, batch, ids, score_threshold, mask_threshold)
        return [(m, [TORCHVISION_COCO_CATEGORIES[i] for i in labels]) for m, labels in res]

    summary = {
        "backend": "maskrcnn",
        "classes": list(names),
        "score_threshold": score_threshold,
        "dilate_px": dilate_px,
        "device": str(device),
    }
    return _run_masks(
        frames, masks_dir, out_hw, predict, batch_size, dilate_px, union_with, scene, summary
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
    :func:`~nsff_core.priors.weights.open_verified` (registry or recorded sha256) and reads a
    ``.pkl`` with :func:`~nsff_core.priors.pretrained.load_pickled_arrays` instead of
    ``pickle.load``; model-zoo and Caffe2-style contents are told apart as detectron2 does. Any
    other file goes through ``torch.load(weights_only=True)``.
    """
    import pickle

    from detectron2 import model_zoo
    from detectron2.checkpoint import DetectionCheckpointer

    from .pretrained import load_pickled_arrays, torch_load_weights
    from .weights import open_verified

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
) -> dict:
    """As :func:`compute_masks_maskrcnn`, with detectron2's R50-FPN 3x (one frame per call)."""
    names = _classes_or_error(classes, scene)
    require_detectron2(scene)
    ids = detectron2_label_ids(names)
    predictor = load_detectron2(checkpoint, device, score_threshold, scene)

    def predict(batch):
        out = []
        for rgb in batch:
            inst = predictor(np.ascontiguousarray(rgb[..., ::-1]))["instances"]  # BGR input
            labels, scores = inst.pred_classes, inst.scores
            mask = instances_to_mask(labels, scores, inst.pred_masks, ids, score_threshold)
            keep = kept_instances(labels, scores, ids, score_threshold)
            out.append((mask, [COCO_CLASSES[int(i)] for i in _to_numpy(labels)[keep]]))
        return out

    summary = {
        "backend": "detectron2",
        "classes": list(names),
        "score_threshold": score_threshold,
        "dilate_px": dilate_px,
        "device": str(predictor.cfg.MODEL.DEVICE),
    }
    return _run_masks(frames, masks_dir, out_hw, predict, 1, dilate_px, union_with, scene, summary)

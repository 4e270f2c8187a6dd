"""Evaluation of a trained scene (rule ``evaluate``; what each score means: docs/evaluation.md).

Two parts, both written to ``eval/metrics.json``:

1. **Test split.** Each frame rendered by the ``render`` rule for split ``test`` (training
   cameras and times, ``render/test/{i:05d}.png``) is scored against training frame ``i``:
   PSNR, SSIM (the real SSIM in [-1, 1], not nsff_pl's ``(1 + SSIM) / 2``) and LPIPS, on the
   full image and on the dynamic region (``masks/{i:05d}.png``, 255 = dynamic). A frame with an
   empty mask has no dynamic score; means over frames ignore such frames (nanmean).
2. **Held-out views** (scenes with ground truth, i.e. synthetic ones). The true training
   cameras are aligned to the SfM cameras by the similarity between their centres (Umeyama).
   Every held-out true camera is placed in the SfM frame (``eval.novel_poses``,
   :func:`novel_cameras_in_sfm`): by default as the SfM camera of its time moved by its true
   offset from the true camera of that time (translation times the similarity's scale);
   ``aligned`` maps the true pose through the similarity (rotation ``R R_true``, centre
   ``s R c + t``). It is rendered at its time and scored against the held-out image. Reported
   beside it: the alignment residual (camera-centre RMS as % of the SfM path length, and the
   mean angle between the mapped true rotations and the SfM rotations), and the **trivial
   baseline**: each held-out image scored against the training frame of the same time (the
   nearest training frame when that frame is held out, part 3), which is what a method that
   ignores the viewpoint change would get.

3. **Held-out frames** (``eval.holdout_every`` k >= 2, :mod:`nsff_core.holdout`; any video).
   The frames left out of training are in the ``test`` split too (rendered at their own pose
   and at their time, by time interpolation between their training neighbours); they are
   scored apart as ``holdout`` (full frame and dynamic region), beside the **nearest-frame
   baseline**: the nearest training frame scored against the held-out frame. ``test`` then
   scores the training frames only.

LPIPS needs local weights: those listed by the marker of rule ``weights_evaluate``
(``results/{scene}/weights_evaluate.json``, :func:`lpips_files_from_marker`), else those found
by :func:`nsff_core.model.metrics.lpips_weight_files` (which never downloads); without them its
values are null and ``lpips_state`` says ``"unavailable: <reason>"``.

In the JSON, non-finite numbers are written as ``null``: no dynamic pixels in a frame, LPIPS
unavailable, or (PSNR) identical images.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nsff_core.config import EvalConfig, RenderSplitConfig
from nsff_core.errors import StageError
from nsff_core.model import io
from nsff_core.model.cameras import (
    camera_centres,
    path_length,
    project_to_rotation,
    rotation_angle_deg,
    transform_c2w,
    umeyama,
)
from nsff_core.progress import Progress

log = logging.getLogger(__name__)

STAGE = "evaluate"
#: Metric names of one image pair, in output order.
METRICS = ("psnr", "ssim", "lpips")
#: Centres whose second singular value is below this fraction of the first are treated as
#: collinear: the rotation about their line is then taken from the camera orientations.
COLLINEAR_RATIO = 1e-3


# --------------------------------------------------------------------------- alignment


@dataclass(frozen=True)
class Alignment:
    """Similarity ``x -> s R x + t`` from the ground-truth world to the SfM world.

    Attributes:
        s, R, t: scale, (3, 3) rotation, (3,) translation.
        centre_rms: RMS distance (SfM units) between the mapped true centres and the SfM centres.
        path_length: length of the SfM camera path (SfM units).
        rot_mean_deg: mean angle between mapped true rotations and SfM rotations.
        rotation_from: ``"centres"`` (Umeyama) or ``"orientations"`` (collinear centres).
        cameras: number of cameras used.
    """

    s: float
    R: np.ndarray
    t: np.ndarray
    centre_rms: float
    path_length: float
    rot_mean_deg: float
    rotation_from: str
    cameras: int

    @property
    def centre_rms_pct(self) -> float:
        """Centre RMS as a percentage of the path length (inf for a static camera)."""
        return 100.0 * self.centre_rms / self.path_length if self.path_length > 0 else math.inf

    def map_c2w(self, c2w_true: np.ndarray) -> np.ndarray:
        """True-world poses (..., 4, 4), OpenCV axes -> SfM-world poses (same axes)."""
        c2w = np.asarray(c2w_true, np.float64)
        flat = c2w.reshape(-1, 4, 4)
        return transform_c2w(self.s, self.R, self.t, flat).reshape(c2w.shape[:-2] + (4, 4))

    def to_dict(self) -> dict:
        return {
            "scale": self.s,
            "rotation": self.R.tolist(),
            "translation": self.t.tolist(),
            "centre_rms": self.centre_rms,
            "path_length": self.path_length,
            "centre_rms_pct_path": self.centre_rms_pct,
            "rotation_residual_deg": self.rot_mean_deg,
            "rotation_from": self.rotation_from,
            "cameras": self.cameras,
        }


def align_to_sfm(
    c2w_sfm: np.ndarray, c2w_true: np.ndarray, use: np.ndarray | None = None
) -> Alignment:
    """Similarity taking the true training cameras onto the SfM cameras (both OpenCV axes).

    Umeyama on the camera centres. When the true centres are (nearly) collinear the rotation
    about their line is undetermined, so the rotation is then the chordal mean of
    ``R_sfm R_true^T`` and scale/translation are fitted with it.

    Args:
        c2w_sfm, c2w_true: (N, 4, 4) poses of the same frames.
        use: optional (N,) bool, the cameras to fit (e.g. SfM-registered ones); at least 3.
    Raises:
        ValueError: fewer than 3 cameras or coincident centres.
    """
    sfm = np.asarray(c2w_sfm, np.float64)
    true = np.asarray(c2w_true, np.float64)
    if sfm.shape != true.shape or sfm.ndim != 3 or sfm.shape[1:] != (4, 4):
        raise ValueError(f"pose arrays differ in shape: SfM {sfm.shape}, truth {true.shape}")
    if use is not None:
        sfm, true = sfm[np.asarray(use, bool)], true[np.asarray(use, bool)]
    if len(sfm) < 3:
        raise ValueError(f"need at least 3 cameras to align, got {len(sfm)}")
    src, dst = camera_centres(true), camera_centres(sfm)
    sv = np.linalg.svd(src - src.mean(0), compute_uv=False)
    if sv[0] <= 0:
        raise ValueError("the true camera centres all coincide; the alignment is undetermined")
    if sv[1] / sv[0] >= COLLINEAR_RATIO:
        s, R, t = umeyama(src, dst)
        rotation_from = "centres"
    else:
        R = project_to_rotation(np.einsum("nij,nkj->ik", sfm[:, :3, :3], true[:, :3, :3]))
        xs, xd = src - src.mean(0), dst - dst.mean(0)
        s = float(np.sum(xd * (xs @ R.T)) / np.sum(xs * xs))
        t = dst.mean(0) - s * R @ src.mean(0)
        rotation_from = "orientations"
    mapped = transform_c2w(s, R, t, true)
    err = np.linalg.norm(mapped[:, :3, 3] - dst, axis=1)
    rot = rotation_angle_deg(mapped[:, :3, :3], sfm[:, :3, :3])
    return Alignment(
        s=float(s),
        R=np.asarray(R),
        t=np.asarray(t),
        centre_rms=float(np.sqrt(np.mean(err**2))),
        path_length=path_length(dst),
        rot_mean_deg=float(rot.mean()),
        rotation_from=rotation_from,
        cameras=len(sfm),
    )


# --------------------------------------------------------------------------- scoring


#: the pretrained LPIPS modules loaded by :func:`load_lpips`, per (backbone, linear, device)
_LPIPS_MODELS: dict = {}
_LPIPS_WARNED = False


#: How :func:`novel_cameras_in_sfm` places the held-out true cameras (config ``eval.novel_poses``).
NOVEL_POSES = ("relative", "aligned")


def novel_cameras_in_sfm(
    align: Alignment,
    c2w_sfm: np.ndarray,
    c2w_true: np.ndarray,
    novel_true: np.ndarray,
    mode: str = EvalConfig.novel_poses,
    registered: np.ndarray | None = None,
) -> np.ndarray:
    """The held-out true cameras ``novel_true`` (N, V, 4, 4) as SfM-frame poses (N, V, 4, 4).

    ``aligned``: each pose through the similarity ``align`` (fitted to all training cameras at
    once). ``relative``: the SfM camera of the same time t, moved by the held-out camera's pose
    in the true camera t's frame, ``c2w_sfm[t] @ inv(c2w_true[t]) @ novel_true[t, v]``, with
    the translation of that relative pose times the similarity's scale (rotations are
    scale-free). Both agree when SfM is exact up to the similarity. When it is not (a focal
    length a few % off bends the recovered path), ``aligned`` renders the true camera while the
    model was trained on the SfM one: a residual of 0.5 deg is 2.6 px at f = 300 px, and every
    edge in the frame then scores as an error no reconstruction can remove, while the trivial
    baseline (a training frame) is immune to it. ``relative`` asks what a user does: render a
    camera a known step away from a reconstructed one. A time whose camera SfM did not
    register (``registered`` False; its pose is filled in) takes the ``aligned`` pose.

    Example: SfM camera t at the origin with identity rotation, the held-out camera 0.15 below
    the true camera t (offset (0, 0.15, 0) in OpenCV axes) and scale 7 -> the SfM camera moved
    to centre (0, 1.05, 0), same rotation.
    """
    if mode == "aligned":
        return align.map_c2w(novel_true)
    if mode != "relative":
        raise ValueError(f"eval.novel_poses must be one of {NOVEL_POSES}, got {mode!r}")
    rel = np.linalg.inv(np.asarray(c2w_true, np.float64))[:, None] @ np.asarray(novel_true)
    rel[..., :3, 3] *= align.s
    out = np.asarray(c2w_sfm, np.float64)[:, None] @ rel
    if registered is not None:
        lost = ~np.asarray(registered, bool)
        out[lost] = align.map_c2w(novel_true[lost])
    return out


def load_lpips(net: str = "alex", weights_path=None, device=None, scene=None, files=None):
    """The pretrained LPIPS module from local files (cached per files and device).

    ``files``: the (backbone, linear) paths to load, e.g. those rule ``weights_evaluate``
    resolved (:func:`lpips_files_from_marker`); without them the files are searched for
    (:func:`nsff_core.model.metrics.lpips_weight_files` with ``weights_path``).

    Both files are checked against the registry entries ``alexnet`` and ``lpips_alex`` of
    :mod:`nsff_core.priors.weights.registry` (by file name: the ``lpips`` package's names
    ``alexnet.pth`` and ``alex.pth`` included): the first use records their full sha256 in
    ``sha256.json`` of their folder (the backbone's prefix ``7be5be79`` is checked then), and
    every later use must match it. They are loaded with ``weights_only=True``. (This lives on
    the stage side, not in :mod:`nsff_core.model.metrics`, because the checked loading is the
    priors' weight code.)

    Raises:
        LpipsUnavailable: when a weight file is missing (see
            :func:`~nsff_core.model.metrics.lpips_weight_files`).
        nsff_core.priors.weights.hashing.WeightsMismatch: a file differs from its recorded sha256
            (a :class:`~nsff_core.errors.StageError` of rule ``evaluate`` for ``scene``).
    """
    import os

    from nsff_core.model.metrics import build_lpips, lpips_weight_files
    from nsff_core.priors.nets.pretrained import torch_load_weights

    if files is None:
        backbone, linear = lpips_weight_files(net, weights_path)
    elif net != "alex":
        raise ValueError(f"only the AlexNet LPIPS is implemented, got net={net!r}")
    else:
        backbone, linear = (os.fspath(f) for f in files)
    key = (backbone, linear, str(device))
    if key not in _LPIPS_MODELS:
        model = build_lpips(
            torch_load_weights(backbone, scene, "evaluate"),
            torch_load_weights(linear, scene, "evaluate"),
        )
        _LPIPS_MODELS[key] = model.to(device) if device is not None else model
    return _LPIPS_MODELS[key]


def lpips_or_nan(
    pred, target, mask=None, net: str = "alex", weights_path=None, model=None
) -> float:
    """:func:`nsff_core.model.metrics.lpips` with ``model`` or the module :func:`load_lpips`
    finds, but ``nan`` (with one logged warning per process) when weights are absent.

    This is what offline evaluation calls, so a missing download reports "unavailable"
    instead of failing the rule.
    """
    from nsff_core.model.metrics import LpipsUnavailable, lpips

    global _LPIPS_WARNED
    try:
        if model is None:
            model = load_lpips(net, weights_path, getattr(pred, "device", None))
        return lpips(pred, target, mask=mask, model=model)
    except LpipsUnavailable as err:
        if not _LPIPS_WARNED:
            log.warning("%s LPIPS is reported as nan.", err)
            _LPIPS_WARNED = True
        return float("nan")


def lpips_files_from_marker(
    marker: str | Path, scene: str | None = None
) -> tuple[tuple[Path, Path] | None, str]:
    """The LPIPS files a marker of rule ``weights_evaluate`` lists: ``((backbone, linear),
    "")``, or ``(None, why)`` when it does not list both or a listed file is gone (the caller
    then searches, :func:`nsff_core.model.metrics.lpips_weight_files`).

    The checkpoints are those of the registry record ``evaluate``/``lpips``
    (:mod:`nsff_core.priors.backends`), backbone first. ``why`` carries the marker's own
    reasons (``"unavailable": {name: reason}``).

    Raises:
        StageError: the marker is not a readable JSON object (delete it and rerun).
    """
    from nsff_core.priors.backends import METRIC_STAGE, get

    names = get(METRIC_STAGE, "lpips").weights
    try:
        content = json.loads(Path(marker).read_text())
        listed, unavailable = content.get("weights", {}), content.get("unavailable", {})
        paths = [Path(listed[n]["path"]) if n in listed else None for n in names]
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as exc:
        raise StageError(
            scene,
            STAGE,
            f"cannot read the LPIPS weights marker {marker} ({type(exc).__name__}: {exc})",
            f"delete {marker} and rerun: rule weights_evaluate writes it again",
        ) from None
    why = []
    for n, p in zip(names, paths, strict=True):
        if p is None:
            why.append(f"{n}: {unavailable.get(n, 'not listed')}")
        elif not p.is_file():
            why.append(f"{n}: {p} (listed in {marker}) is gone")
    if why:
        return None, "; ".join(why)
    return (paths[0], paths[1]), ""


class Scorer:
    """PSNR, SSIM and LPIPS of image pairs, with LPIPS loaded once (or reported unavailable).

    The LPIPS files are those a ``weights_marker`` lists, else those found by
    :func:`nsff_core.model.metrics.lpips_weight_files` (starting at ``lpips_weights``); with neither,
    LPIPS is unavailable and scored as nan.

    Args:
        lpips_weights: directory or file with the LPIPS weights (default: ``$NSFF_WEIGHTS_DIR``
            and torch hub's cache; see :func:`nsff_core.model.metrics.lpips_weight_files`).
        scene: scene name for error messages.
        weights_marker: ``weights_evaluate.json`` of rule ``weights_evaluate``, or None.
    Attributes:
        lpips_state: ``"available: ..."`` or ``"unavailable: <reason>"``.
    """

    def __init__(
        self,
        lpips_weights: str | Path | None = None,
        scene: str | None = None,
        weights_marker: str | Path | None = None,
    ) -> None:
        from nsff_core.model.metrics import LpipsUnavailable, lpips_weight_files

        self.model = None
        files, why = None, ""
        if weights_marker is not None:
            files, why = lpips_files_from_marker(weights_marker, scene)
            if files is None:
                log.info("evaluate: no LPIPS weights from %s (%s); searching", weights_marker, why)
        try:
            if files is None:
                files = lpips_weight_files("alex", lpips_weights)
            self.model = load_lpips("alex", scene=scene, files=files)
            self.lpips_state = f"available: AlexNet v0.1 ({files[0]}, {files[1]})"
        except LpipsUnavailable as exc:
            reason = str(exc).removeprefix("LPIPS unavailable: ")
            if why:
                reason += f" Rule weights_evaluate: {why}."
            self.lpips_state = "unavailable: " + reason

    def score(self, pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> dict:
        """Scores of one pair of uint8 (H, W, 3) images, optionally inside a bool (H, W) mask.

        Returns ``{"psnr", "ssim", "lpips"}`` floats (nan: empty mask or LPIPS unavailable).
        """
        from nsff_core.model.metrics import lpips, psnr, ssim

        p = np.asarray(pred, np.float64) / 255.0
        t = np.asarray(target, np.float64) / 255.0
        if mask is not None and not np.any(mask):
            return dict.fromkeys(METRICS, math.nan)
        return {
            "psnr": psnr(p, t, mask),
            "ssim": ssim(p, t, mask),
            "lpips": math.nan if self.model is None else lpips(p, t, mask, model=self.model),
        }


def _nanmean(values) -> float:
    a = np.asarray(values, np.float64)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else math.nan


def _summarise(rows: list[dict], keys) -> dict:
    """Per-frame lists and nanmeans of ``keys`` over ``rows``."""
    per = {k: [r[k] for r in rows] for k in keys}
    return {"per_frame": per, "mean": {k: _nanmean(v) for k, v in per.items()}}


def _jsonable(obj):
    """Replace non-finite floats by None (strict JSON) recursively; numpy scalars to Python."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# --------------------------------------------------------------------------- inputs


def _read_frames(folder: Path, what: str, scene, hint: str) -> list[Path]:
    if not folder.is_dir():
        raise StageError(scene, STAGE, f"{what} folder {folder} does not exist", hint)
    files = io.list_frames(folder)
    if not files:
        raise StageError(scene, STAGE, f"{what} folder {folder} has no PNG frames", hint)
    return files


def score_test_split(
    frames_dir: Path,
    masks_dir: Path,
    test_dir: Path,
    scorer: Scorer,
    scene: str | None = None,
    holdout_every: int = 0,
) -> tuple[dict, dict | None]:
    """Scores of the ``test`` split renders against the real frames (full and dynamic).

    Returns ``(test, holdout)``: ``test`` over the training frames; ``holdout`` over the
    frames left out of training (``holdout_every`` k >= 2, :mod:`nsff_core.holdout`; None
    when k is 0), with the **nearest-frame baseline** beside it: each held-out frame scored
    against the nearest training frame, which is what showing the video without a model gives.
    """
    from nsff_core.holdout import held_out_frames, nearest_training_frame, training_frames

    frames = _read_frames(frames_dir, "training frames", scene, "rerun the frames rule")
    renders = _read_frames(
        test_dir,
        "test-split render",
        scene,
        "run the render rule for split 'test' first "
        f"(e.g. snakemake results/{scene or '<scene>'}/render/test)",
    )
    if len(renders) != len(frames):
        raise StageError(
            scene,
            STAGE,
            f"{test_dir} has {len(renders)} frames but {frames_dir} has {len(frames)}",
            "rerun the render rule for split 'test' (delete its outputs) after training",
        )
    try:
        held = set(held_out_frames(len(frames), holdout_every).tolist())
    except ValueError as exc:
        raise StageError(scene, STAGE, str(exc), "set eval.holdout_every") from None
    kept = training_frames(len(frames), holdout_every)
    rows, held_rows, base_rows, nearest = [], [], [], []
    progress = Progress("evaluate: test split, frame", len(frames), log)
    for i, (fp, rp) in enumerate(zip(frames, renders, strict=True)):
        target, pred = io.read_image(fp, made_by="frames"), io.read_image(rp, made_by="render")
        if pred.shape != target.shape:
            raise StageError(
                scene,
                STAGE,
                f"render {rp} is {pred.shape[1]}x{pred.shape[0]} but frame {fp} is "
                f"{target.shape[1]}x{target.shape[0]}",
                "rerun the render rule for split 'test'",
            )
        mask_path = masks_dir / fp.name
        if not mask_path.is_file():
            raise StageError(scene, STAGE, f"mask {mask_path} is missing", "rerun the masks rule")
        mask = io.read_mask(mask_path)
        row = _row(scorer, pred, target, mask)
        if i in held:
            j = nearest_training_frame(i, kept)
            near = io.read_image(frames[j], made_by="frames")
            held_rows.append(row)
            base_rows.append(_row(scorer, near, target, mask))
            nearest.append(j)
        else:
            rows.append(row)
        progress.update(i + 1)
    keys = [*METRICS, *(f"{k}_dynamic" for k in METRICS), "dynamic_fraction"]
    out = _summarise(rows, keys)
    out["frames"] = len(rows)
    out["names"] = [p.name for i, p in enumerate(frames) if i not in held]
    holdout = None
    if held:
        order = sorted(held)
        holdout = {
            "every": int(holdout_every),
            "frames": len(order),
            "names": [frames[i].name for i in order],
            **_summarise(held_rows, keys),
            "baseline": {"nearest": nearest, **_summarise(base_rows, keys)},
        }
    return out, holdout


def _row(scorer: Scorer, pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> dict:
    """Full-image and dynamic-region scores of one image pair, and the mask's share."""
    full = scorer.score(pred, target)
    dyn = scorer.score(pred, target, mask)
    return {
        **full,
        **{f"{k}_dynamic": v for k, v in dyn.items()},
        "dynamic_fraction": float(mask.mean()),
    }


def evaluate_novel_views(
    ckpt: Path,
    cams: dict,
    frames: list[Path],
    gt_path: Path,
    novel_dir: Path,
    scorer: Scorer,
    chunk: int,
    scene: str | None = None,
    holdout_every: int = 0,
    novel_poses: str = EvalConfig.novel_poses,
) -> dict:
    """Render the held-out ground-truth cameras in the SfM frame and score them (module doc;
    ``novel_poses``: how the cameras are placed there, :func:`novel_cameras_in_sfm`).

    With held-out frames (``holdout_every``) the trivial baseline of a held-out time is the
    nearest training frame, since the frame of that time was not trained on."""
    import torch

    from nsff_core.holdout import nearest_training_frame, training_frames
    from nsff_core.model.paths import CameraPath
    from nsff_core.model.synthetic import load_ground_truth

    from .render_split import load_system, render_camera_path, to_uint8

    gt = load_ground_truth(gt_path)
    n, hw = len(cams["c2w"]), tuple(int(v) for v in cams["hw"])
    hint = "novel-view scores need the synthetic scene's frames unsubsampled, at its own size"
    if gt.num_frames != n or gt.num_frames != len(frames):
        raise StageError(
            scene,
            STAGE,
            f"ground truth {gt_path} has {gt.num_frames} frames, cameras.npz {n}, "
            f"frames/ {len(frames)}",
            hint,
        )
    novel_truth = gt.novel_images
    if gt.hw != hw:
        # a suite preset rendered at 854x480 and trained at `width: 320`: the frames rule scaled
        # the video, so the held-out views are scaled the same way (area averaging); a different
        # aspect ratio means the frames were cropped, and the views no longer correspond
        (gh, gw), (h, w) = gt.hw, hw
        if abs(gh / gw - h / w) > 0.01 * (h / w):
            raise StageError(
                scene, STAGE, f"ground truth is {gt.hw} (H, W), cameras.npz {hw}", hint
            )
        import cv2

        novel_truth = np.stack(
            [
                [cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA) for img in per_time]
                for per_time in gt.novel_images
            ]
        )
        log.info("evaluate: held-out views scaled from %dx%d to the training %dx%d", gw, gh, w, h)
    views = int(gt.novel_c2w.shape[1])
    if views == 0:
        log.info("evaluate: the ground truth has no held-out views")
        return {"views": 0}
    registered = cams.get("registered")
    try:
        align = align_to_sfm(cams["c2w"], gt.c2w, registered)
    except ValueError as exc:
        raise StageError(
            scene,
            STAGE,
            f"cannot align SfM to true cameras: {exc}",
            "check the sfm rule's result (registered frames, camera path)",
        ) from None
    log.info(
        "evaluate: aligned true cameras to SfM (%d cameras, rotation from %s): centre RMS "
        "%.3g%% of the path, rotation residual %.3g deg",
        align.cameras,
        align.rotation_from,
        align.centre_rms_pct,
        align.rot_mean_deg,
    )
    c2w = novel_cameras_in_sfm(align, cams["c2w"], gt.c2w, gt.novel_c2w, novel_poses, registered)
    c2w = c2w.reshape(-1, 4, 4)  # time-major: (t, v)
    times = np.repeat(np.arange(n, dtype=np.float64), views)
    path = CameraPath(c2w=c2w, K=cams["K"], hw=hw, times=times, name="novel")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    log.info("evaluate: rendering %d held-out views on %s", len(path), device)
    t0 = time.perf_counter()
    system = load_system(ckpt, device)
    rendered = to_uint8(render_camera_path(system, path, chunk, what="evaluate: held-out view").rgb)
    seconds = time.perf_counter() - t0
    with io.atomic_dir(novel_dir) as tmp:
        for k, img in enumerate(rendered):
            io.write_image(tmp / f"{k // views:05d}_v{k % views}.png", img)
    rows, base = [], []
    train_imgs = [io.read_image(p, made_by="frames") for p in frames]
    kept = training_frames(len(frames), holdout_every)
    for k, img in enumerate(rendered):
        t, v = divmod(k, views)
        truth = novel_truth[t, v]
        rows.append({"time": t, "view": v, **scorer.score(img, truth)})
        base.append(scorer.score(train_imgs[nearest_training_frame(t, kept)], truth))
    out = {
        "views": views,
        "count": len(rows),
        "poses": novel_poses,
        "alignment": align.to_dict(),
        "time": [r["time"] for r in rows],
        "view": [r["view"] for r in rows],
        **_summarise(rows, METRICS),
        "baseline": _summarise(base, METRICS),
        "render_seconds": seconds,
    }
    m, b = out["mean"], out["baseline"]["mean"]
    log.info(
        "evaluate: held-out views PSNR %.2f SSIM %.4f; trivial baseline PSNR %.2f SSIM %.4f",
        m["psnr"],
        m["ssim"],
        b["psnr"],
        b["ssim"],
    )
    return out


# --------------------------------------------------------------------------- entry point


def evaluate_scene(
    ckpt: str | Path,
    cameras: str | Path,
    frames_dir: str | Path,
    masks_dir: str | Path,
    test_dir: str | Path,
    out_json: str | Path,
    gt: str | Path | None = None,
    novel_dir: str | Path | None = None,
    chunk: int = RenderSplitConfig.chunk,
    scene: str | None = None,
    lpips_weights: str | Path | None = None,
    holdout_every: int = 0,
    weights_marker: str | Path | None = None,
    novel_poses: str = EvalConfig.novel_poses,
) -> dict:
    """Evaluate one trained scene and write ``out_json`` (see the module docstring).

    Args:
        ckpt: ``train/last.ckpt`` (used only to render held-out views).
        cameras: ``cameras.npz``.
        frames_dir, masks_dir: ``frames/`` and ``masks/`` of the scene.
        test_dir: ``render/test/``, the frames of the render rule's ``test`` split.
        out_json: ``eval/metrics.json`` (written atomically, last).
        gt: ground-truth ``gt/scene.npz`` of a synthetic scene, or None.
        novel_dir: where the held-out renders go as PNGs (default ``out_json``'s folder /
            ``novel``); always created, with a README.txt saying what it holds.
        chunk: rays per forward pass when rendering.
        scene: scene name for error messages.
        lpips_weights: local LPIPS weights (see :class:`Scorer`).
        weights_marker: ``weights_evaluate.json``, the LPIPS files rule ``weights_evaluate``
            resolved (see :class:`Scorer`); None: only the search.
        holdout_every: config ``eval.holdout_every`` of the training run (0: no held-out
            frames); the held-out frames are scored apart (module docstring, part 3).
        novel_poses: config ``eval.novel_poses``, how the held-out true cameras are placed in
            the SfM frame (:func:`novel_cameras_in_sfm`).
    Returns:
        the dict written to ``out_json`` (with NaN where the file has null).
    Raises:
        StageError: missing or inconsistent inputs (the message names scene and rule).
    """
    t0 = time.perf_counter()
    out_json = Path(out_json)
    novel_dir = Path(novel_dir) if novel_dir is not None else out_json.parent / "novel"
    frames_dir, masks_dir, test_dir = Path(frames_dir), Path(masks_dir), Path(test_dir)
    scorer = Scorer(lpips_weights, scene, weights_marker)
    log.info("evaluate: LPIPS %s", scorer.lpips_state)
    test, holdout = score_test_split(frames_dir, masks_dir, test_dir, scorer, scene, holdout_every)
    mean = test["mean"]
    log.info(
        "evaluate: training frames PSNR %.2f SSIM %.4f; dynamic region PSNR %.2f SSIM %.4f",
        mean["psnr"],
        mean["ssim"],
        mean["psnr_dynamic"],
        mean["ssim_dynamic"],
    )
    if holdout is not None:
        m, b = holdout["mean"], holdout["baseline"]["mean"]
        log.info(
            "evaluate: %d held-out frames PSNR %.2f SSIM %.4f (dynamic region PSNR %.2f); "
            "nearest-frame baseline PSNR %.2f SSIM %.4f (dynamic %.2f)",
            holdout["frames"],
            m["psnr"],
            m["ssim"],
            m["psnr_dynamic"],
            b["psnr"],
            b["ssim"],
            b["psnr_dynamic"],
        )
    novel = None
    if gt is not None:
        if not Path(gt).is_file():
            raise StageError(scene, STAGE, f"ground truth {gt} does not exist", "rerun synthetic")
        cams = io.read_cameras(cameras)
        frames = io.list_frames(frames_dir)
        novel = evaluate_novel_views(
            Path(ckpt),
            cams,
            frames,
            Path(gt),
            novel_dir,
            scorer,
            chunk,
            scene,
            holdout_every,
            novel_poses,
        )
    has_views = bool(novel and novel["views"])
    readme = (
        "Renders of the held-out ground-truth cameras, {time:05d}_v{view}.png, in the SfM frame.\n"
        if has_views
        else "This scene has no ground-truth held-out views; nothing is rendered here.\n"
    )
    novel_dir.mkdir(parents=True, exist_ok=True)
    (novel_dir / "README.txt").write_text(readme)
    result = {
        "scene": scene,
        "split": "test",
        "ssim_convention": "real SSIM in [-1, 1] (not (1 + SSIM) / 2)",
        "lpips_state": scorer.lpips_state,
        "frames": test["frames"],
        "test": test,
        "holdout": holdout,
        "novel": novel,
        "novel_dir": str(novel_dir) if has_views else None,
        "seconds": time.perf_counter() - t0,
    }
    with io.atomic_file(out_json) as tmp:
        tmp.write_text(json.dumps(_jsonable(result), indent=1) + "\n")
    log.info("evaluate: wrote %s (%.1f s)", out_json, result["seconds"])
    return result

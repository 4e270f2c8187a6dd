"""End-point error and time of the weights-free flow (DIS) settings on synthetic and real scenes.

    python benchmarks/flow_table.py [--cache /tmp/nsff_flow_table] [--width 512]
        [--variants demo,suite_ball,...] [--sources 854x480,320x180]
        [--settings old,default,...] [--real DIR | --real none] [--threads 1]

Scenes:

- synthetic (exact ground truth): the demo (320x180 source) and every preset of the
  scene-variety suite (``nsff_core.model.synthetic.SUITE_PRESETS``), each rendered at every
  ``--sources`` size (the suite's own 854x480, which the frames rule shrinks to the training
  width, and 320x180, which it enlarges), degradations applied, written as the workflow's
  mp4 and put through the frames rule at ``--width``; the ground truth is rendered on the
  training-size pixel grid. Cached under ``--cache`` (about a minute per 854x480 variant).
- real (optional, ``--real`` folder with ``flow_sintel`` and/or ``flow_kitti2012``): the MPI-Sintel
  and KITTI-2012 pairs there, shrunk to ``--width`` as the frames rule does; the flow at the
  training size is enlarged to the ground truth's size and the error expressed in training
  pixels (each axis scaled by training / source size), so all rows share one unit.

Measures, per scene and setting: mean end-point error in training pixels over all pixels
(``all``; for KITTI all pixels with ground truth) and over the non-occluded ones (``noc``:
synthetic: the pixel's target lies in the next frame and the true forward and backward flows
agree to 0.5 px there; Sintel: its occlusion mask); synthetic scenes average the forward and
backward fields of every pair. Time per pair: CPU seconds (process time, both directions,
including reading the source frames, resizing and the fill; not the frame and file I/O of the
workflow) with OpenCV limited to ``--threads``; ``x old`` is the ratio to the old default.

Settings (``--settings``, names below): the old and new defaults, each change alone from the
old default, and combinations. Some only exist here, to show what was measured and not taken:
DIS refinement changes, patch stride 2, a 5x5 median filter of the field, Farneback.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nsff_core.config import FlowConfig, FramesConfig
from nsff_core.model.io import list_frames, read_flo, read_image, write_video
from nsff_core.priors.flow import DisFlow, dis_pair, dis_scale, dis_sequence
from nsff_core.priors.nets.flow_ops import consistency_mask, resize_flow

OLD = dict(dis_preset="medium", dis_scale="training", dis_fill_radius=0, dis_predict=False)


@dataclass(frozen=True)
class Setting:
    """A flow setting: FlowConfig keys, optional DIS parameter changes and post-filter."""

    flow: dict = field(default_factory=dict)
    dis: dict = field(default_factory=dict)  # cv2.DISOpticalFlow setter name -> value
    median: int = 0  # odd kernel size of a median filter of each field, 0 = none
    farneback: bool = False


SETTINGS: dict[str, Setting] = {
    "old": Setting(OLD),
    # each change alone, from the old default
    "preset fine": Setting({**OLD, "dis_preset": "fine"}),
    "finest scale 0": Setting(OLD, {"setFinestScale": 0}),
    "refine alpha 40": Setting(OLD, {"setVariationalRefinementAlpha": 40.0}),
    "refine iters 20": Setting(OLD, {"setVariationalRefinementIterations": 20}),
    "refine gamma 5": Setting(OLD, {"setVariationalRefinementGamma": 5.0}),
    "patch stride 2": Setting(OLD, {"setPatchStride": 2}),
    "patch size 12": Setting(OLD, {"setPatchSize": 12, "setPatchStride": 4}),
    "scale auto": Setting({**OLD, "dis_scale": "auto"}),
    "scale source": Setting({**OLD, "dis_scale": "source"}),
    "fill 16": Setting({**OLD, "dis_fill_radius": 16}),
    "median 5": Setting(OLD, median=5),
    "farneback": Setting(OLD, farneback=True),
    # combinations
    "fine + fill": Setting({**OLD, "dis_preset": "fine", "dis_fill_radius": 16}),
    "fine + auto": Setting({**OLD, "dis_preset": "fine", "dis_scale": "auto"}),
    "medium + auto + fill": Setting({**OLD, "dis_scale": "auto", "dis_fill_radius": 16}),
    "default without prediction": Setting({"dis_predict": False}),
    "default": Setting({}),
    "fine + source + fill": Setting({"dis_scale": "source"}),
}


# --------------------------------------------------------------------------- estimators


class _Tuned(DisFlow):
    """DisFlow with extra OpenCV DIS setter calls (settings measured here only)."""

    def __init__(self, preset: str, setters: dict) -> None:
        super().__init__(preset)
        for dis in self.instances:
            for name, value in setters.items():
                getattr(dis, name)(value)


def _farneback(rgb_a: np.ndarray, rgb_b: np.ndarray) -> np.ndarray:
    import cv2

    a, b = (cv2.cvtColor(x, cv2.COLOR_RGB2GRAY) for x in (rgb_a, rgb_b))
    return cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 5, 15, 5, 7, 1.5, 0)


def estimator(setting: Setting, cfg: FlowConfig):
    if setting.farneback:
        return _farneback
    return _Tuned(cfg.dis_preset, setting.dis) if setting.dis else DisFlow(cfg.dis_preset)


def flows(
    setting: Setting,
    train: list,
    frames_json: Path | None,
    pairs: list,
    numbers: list | None = None,
    src: list | None = None,
) -> tuple:
    """Forward and backward fields at the training size for frame index pairs (i, j), and the
    CPU seconds per pair. ``numbers``: the frames' numbers in the video when ``train`` is a
    subsequence (their gaps scale the predictions); ``src``: the estimator's images when
    ``train`` is a subsequence of a scene DIS runs on at source size."""
    import cv2

    from nsff_core.priors.frames import read_source_frames

    cfg = FlowConfig(**setting.flow)
    est = estimator(setting, cfg)
    t0 = time.process_time()
    if src is None:
        src = (
            list(read_source_frames(frames_json))
            if dis_scale(cfg, frames_json) == "source"
            else train
        )
    if pairs == [(i, i + 1) for i in range(len(train) - 1)] and not setting.farneback:
        # a whole sequence: the flow rule's own path (with dis_predict's predictions)
        numbers = list(range(len(train))) if numbers is None else numbers
        fields = list(dis_sequence(zip(train, src, strict=True), numbers, est, cfg))
    else:  # separate pairs (Sintel, KITTI): nothing to predict from
        fields = [dis_pair(est, src[i], src[j], train[i], train[j], cfg) for i, j in pairs]
    out = []
    for fw, bw in fields:
        if setting.median:
            fw, bw = (cv2.medianBlur(f, setting.median) for f in (fw, bw))
        out.append((fw, bw))
    return out, (time.process_time() - t0) / len(pairs)


# --------------------------------------------------------------------------- scenes


@dataclass
class Scene:
    name: str
    group: str
    train: list  # training frames (H, W, 3) uint8
    frames_json: Path | None
    pairs: list  # (i, j) frame index pairs
    gt_fw: list  # per pair: (H', W', 2) ground truth, in ground-truth pixels
    gt_bw: list | None
    valid_fw: list  # per pair: (all, noc) bool masks on the ground-truth grid
    valid_bw: list | None
    to_train: tuple = (1.0, 1.0)  # training / ground-truth size, x and y
    dynamic: list | None = None  # synthetic: per frame, (H, W) True on a mover


def synthetic_scene(cache: Path, name: str, size: tuple | None, width: int) -> Scene:
    """Render (or load from ``cache``) a synthetic variant through the frames rule."""
    from nsff_core.config import stage_config
    from nsff_core.model.synthetic import render_scene, source_frames, suite_config
    from nsff_core.priors.frames import extract_frames

    if name == "demo":
        cfg = stage_config("synthetic", {"novel_offsets": []})
        tag = "demo"
    else:
        sized = {} if size is None else {"width": size[0], "height": size[1]}
        cfg = suite_config(name, novel_offsets=(), **sized)
        tag = f"{name}_{cfg.width}x{cfg.height}"
    d = cache / f"{tag}_w{width}"
    if not (d / "gt.npz").exists():
        d.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        scene = render_scene(cfg)
        write_video(d / "video.mp4", source_frames(scene, cfg), scene.fps)
        info = extract_frames(
            d / "video.mp4", d / "frames", d / "frames.json", FramesConfig(width=width)
        )
        gt = render_scene(cfg, size=tuple(info["size"]))
        fw, bw, dyn = gt.flow_fw, gt.flow_bw, gt.dynamic_mask
        # non-occluded: the true round trip closes within 0.5 px and lands inside the image
        noc_fw = np.stack([consistency_mask(f, b, 0.0, 0.25) for f, b in zip(fw, bw, strict=True)])
        noc_bw = np.stack([consistency_mask(b, f, 0.0, 0.25) for f, b in zip(fw, bw, strict=True)])
        np.savez_compressed(d / "gt.npz", fw=fw, bw=bw, noc_fw=noc_fw, noc_bw=noc_bw, dyn=dyn)
        print(f"# rendered {tag} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    z = dict(np.load(d / "gt.npz"))
    if "dyn" not in z:  # a cache written before the masks were kept
        z["dyn"] = render_scene(cfg, size=tuple(z["fw"].shape[2:0:-1])).dynamic_mask
        np.savez_compressed(d / "gt.npz", **z)
    train = [read_image(p) for p in list_frames(d / "frames")]
    n = len(train)
    every = np.ones(z["fw"].shape[1:3], bool)
    src = json.loads((d / "frames.json").read_text())["source_size"]
    return Scene(
        name=tag,
        group=f"synthetic {src[0]}x{src[1]}",
        train=train,
        frames_json=d / "frames.json",
        pairs=[(i, i + 1) for i in range(n - 1)],
        gt_fw=list(z["fw"]),
        gt_bw=list(z["bw"]),
        valid_fw=[(every, m) for m in z["noc_fw"]],
        valid_bw=[(every, m) for m in z["noc_bw"]],
        dynamic=list(z["dyn"]),
    )


def _shrink(img: np.ndarray, width: int) -> np.ndarray:
    """The frames rule's resize to ``width`` (height rounded to even, INTER_AREA)."""
    import cv2

    h, w = img.shape[:2]
    th = max(2, int(round(h * width / w / 2)) * 2)
    return cv2.resize(img, (width, th), interpolation=cv2.INTER_AREA)


def real_scenes(root: Path, width: int) -> list[Scene]:
    """Sintel (flo + occlusion and invalid masks) and KITTI-2012 (sparse 16-bit PNG) pairs."""
    import cv2

    out = []
    for d in sorted((root / "flow_sintel").glob("sintel_*")):
        a, b = read_image(d / "frame_0002.png"), read_image(d / "frame_0003.png")
        gt = read_flo(d / "gt" / "frame_0002.flo", made_by=None)
        bad = cv2.imread(str(d / "gt/invalid/frame_0002.png"), cv2.IMREAD_GRAYSCALE) > 0
        occ = cv2.imread(str(d / "gt/occlusions/frame_0002.png"), cv2.IMREAD_GRAYSCALE) > 0
        out.append((d.name, "real sintel", a, b, gt, ~bad, ~bad & ~occ))
    for p in sorted((root / "flow_kitti2012" / "flow_gt").glob("*_10.png")):
        img = root / "flow_kitti2012" / "image_2"
        a, b = read_image(img / p.name), read_image(img / p.name.replace("_10", "_11"))
        raw = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)[..., ::-1].astype(np.float64)
        gt = ((raw[..., :2] - 2**15) / 64).astype(np.float32)
        ok = raw[..., 2] > 0
        out.append((f"kitti_{p.stem}", "real kitti", a, b, gt, ok, ok))
    scenes = []
    for name, group, a, b, gt, v_all, v_noc in out:
        ta, tb = _shrink(a, width), _shrink(b, width)
        h, w = a.shape[:2]
        th, tw = ta.shape[:2]
        scenes.append(
            Scene(
                name=name,
                group=group,
                train=[ta, tb],
                frames_json=_fake_frames_json(name, a, b, (tw, th)),
                pairs=[(0, 1)],
                gt_fw=[gt],
                gt_bw=None,
                valid_fw=[(v_all, v_noc)],
                valid_bw=None,
                to_train=(tw / w, th / h),
            )
        )
    return scenes


def _fake_frames_json(name: str, a: np.ndarray, b: np.ndarray, size: tuple) -> Path:
    """A frames.json for an image pair, so that ``dis_scale: source`` reads the originals."""
    from nsff_core.model.io import write_image

    d = Path(tempfile.mkdtemp(prefix=f"flow_table_{name}_"))
    atexit.register(shutil.rmtree, d, True)
    (d / "src").mkdir()
    write_image(d / "src" / "a.png", a)
    write_image(d / "src" / "b.png", b)
    info = {
        "source": str(d / "src"),
        "kind": "images",
        "source_size": [a.shape[1], a.shape[0]],
        "size": list(size),
        "source_names": ["a.png", "b.png"],
        "source_indices": [0, 1],
    }
    (d / "frames.json").write_text(json.dumps(info))
    return d / "frames.json"


# --------------------------------------------------------------------------- measuring


def epe(scene: Scene, fields: list) -> tuple[float, float]:
    """Mean end-point error (all, noc) in training pixels over the scene's fields."""
    errs_all, errs_noc = [], []
    sx, sy = scene.to_train
    for k, (fw, bw) in enumerate(fields):
        items = [(fw, scene.gt_fw[k], scene.valid_fw[k])]
        if scene.gt_bw is not None:
            items.append((bw, scene.gt_bw[k], scene.valid_bw[k]))
        for est, gt, (v_all, v_noc) in items:
            est = resize_flow(est, gt.shape[:2])
            e = np.linalg.norm((est - gt) * np.array([sx, sy], np.float32), axis=-1)
            errs_all.append(e[v_all].mean())
            errs_noc.append(e[v_noc].mean())
    return float(np.mean(errs_all)), float(np.mean(errs_noc))


def add_scene_arguments(ap: argparse.ArgumentParser, sources: str) -> None:
    """The options that pick the synthetic scenes and the threads (shared with flow_gaps.py)."""
    from nsff_core.model.synthetic import SUITE_PRESETS

    ap.add_argument("--cache", type=Path, default=Path("/tmp/nsff_flow_table"))
    ap.add_argument("--width", type=int, default=512, help="training width")
    ap.add_argument("--variants", default="demo," + ",".join(SUITE_PRESETS))
    ap.add_argument("--sources", default=sources, help="suite source sizes")
    ap.add_argument("--threads", type=int, default=1, help="OpenCV threads (timing)")


def scenes_and_settings(ap: argparse.ArgumentParser, args) -> tuple[list[Scene], list[str]]:
    """Set OpenCV's threads; the synthetic scenes and the setting names the options ask for."""
    import cv2

    cv2.setNumThreads(args.threads)
    names = [s for s in args.settings.split(",") if s]
    unknown = sorted(set(names) - set(SETTINGS))
    if unknown:
        ap.error(f"unknown settings {unknown}; known: {list(SETTINGS)}")
    scenes: list[Scene] = []
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sources.split(",") if s]
    for v in [v for v in args.variants.split(",") if v]:
        for size in [None] if v == "demo" else sizes:
            scenes.append(synthetic_scene(args.cache, v, size, args.width))
    return scenes, names


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_scene_arguments(ap, "854x480,320x180")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--real", default="none", help="folder with flow_sintel/flow_kitti2012")
    args = ap.parse_args(argv)
    scenes, names = scenes_and_settings(ap, args)
    if args.real != "none" and Path(args.real).is_dir():
        scenes += real_scenes(Path(args.real), args.width)

    results: dict = {}  # (setting, scene) -> (all, noc, cpu per pair)
    for name in names:
        for sc in scenes:
            fields, cpu = flows(SETTINGS[name], sc.train, sc.frames_json, sc.pairs)
            results[name, sc.name] = (*epe(sc, fields), cpu)
            print(f"# {name:22s} {sc.name:28s} {results[name, sc.name]}", file=sys.stderr)

    groups = list(dict.fromkeys(sc.group for sc in scenes))
    synth = [sc for sc in scenes if sc.group.startswith("synthetic")]
    print(f"## Mean EPE (px at width {args.width}), all / non-occluded, and CPU time per pair\n")
    head = ["setting", *groups]
    if synth:
        head += ["synthetic mean", "synthetic worst"]
    head += ["s/pair", "x old"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    old_t = None
    if "old" in names:
        old_t = np.mean([results["old", sc.name][2] for sc in synth or scenes])
    for name in names:
        row = [name]
        for g in groups:
            r = [results[name, sc.name] for sc in scenes if sc.group == g]
            row.append(f"{np.mean([x[0] for x in r]):.3f} / {np.mean([x[1] for x in r]):.3f}")
        if synth:
            r = [results[name, sc.name] for sc in synth]
            row.append(f"{np.mean([x[0] for x in r]):.3f} / {np.mean([x[1] for x in r]):.3f}")
            worst = max(synth, key=lambda sc: results[name, sc.name][0])
            row.append(f"{results[name, worst.name][0]:.3f} ({worst.name})")
        t = np.mean([results[name, sc.name][2] for sc in synth or scenes])
        row.append(f"{t:.3f}")
        row.append(f"{t / old_t:.1f}" if old_t else "-")
        print("| " + " | ".join(row) + " |")

    print("\n## CPU seconds per pair (both directions), by scene group\n")
    print("| setting | " + " | ".join(groups) + " |")
    print("|" + "---|" * (len(groups) + 1))
    for name in names:
        cells = [
            f"{np.mean([results[name, sc.name][2] for sc in scenes if sc.group == g]):.3f}"
            for g in groups
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")

    print(f"\n## EPE per scene (px at width {args.width}), all / non-occluded\n")
    print("| scene | " + " | ".join(names) + " |")
    print("|" + "---|" * (len(names) + 1))
    for sc in scenes:
        cells = [f"{results[n, sc.name][0]:.3f} / {results[n, sc.name][1]:.3f}" for n in names]
        print(f"| {sc.name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

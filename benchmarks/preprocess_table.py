"""Print a table of the preprocessing of finished scenes: per-stage run time, SfM figures and,
for synthetic scenes, quality against the ground truth.

    python benchmarks/preprocess_table.py results/demo [results/<scene> ...]

Run times come from each rule's Snakemake benchmark file (results/<scene>/benchmarks/<rule>.tsv).
Ground truth is ``gt/scene.npz`` when the training frames have its size, else
``gt/scene_<W>x<H>.npz`` at the training size (``benchmarks/priors_suite.py`` writes it).
The measures (:func:`ground_truth_quality`) are shared with ``priors_suite.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from nsff_core.model import io
from nsff_core.model.cameras import pose_error
from nsff_core.model.metrics import end_point_error, iou, spearman

STAGES = ("synthetic", "frames", "flow", "masks", "sfm", "depth")


def stage_seconds(scene_dir: Path, stages=STAGES) -> dict[str, float]:
    """Wall seconds of each rule that has a benchmark file, by stage name."""
    out = {}
    for stage in stages:
        f = scene_dir / "benchmarks" / f"{stage}.tsv"
        if f.exists():
            header, values = f.read_text().splitlines()[:2]
            out[stage] = float(dict(zip(header.split("\t"), values.split("\t"), strict=False))["s"])
    return out


def training_size(scene_dir: Path) -> tuple[int, int] | None:
    """(width, height) of the scene's training frames, from frames.json; None before frames."""
    f = scene_dir / "frames.json"
    if not f.exists():
        return None
    w, h = json.loads(f.read_text())["size"]
    return int(w), int(h)


def gt_path(scene_dir: Path) -> Path | None:
    """The ground truth at the training size: gt/scene.npz if its frames have that size, else
    gt/scene_<W>x<H>.npz; None when there is none."""
    size = training_size(scene_dir)
    if size is None:
        return None
    sized = scene_dir / "gt" / f"scene_{size[0]}x{size[1]}.npz"
    if sized.exists():
        return sized
    full = scene_dir / "gt" / "scene.npz"
    if full.exists():
        with np.load(full) as z:
            if tuple(z["depth"].shape[1:]) == (size[1], size[0]):
                return full
    return None


def ground_truth_quality(scene_dir: Path, gt: dict | None = None) -> dict[str, float]:
    """Quality of each prior that exists against the ground truth (arrays of a
    :class:`~nsff_core.model.synthetic.SyntheticScene` at the training size; default: read from
    :func:`gt_path`).

    Keys: flow end-point error of the forward flow over all pixels and over the dynamic ones
    (px, training size); mask IoU per frame (mean, min) and false positives (% of static pixels
    marked dynamic, all frames pooled); camera-centre RMS error (% of the path length) and mean
    rotation error (deg) of the registered frames after similarity alignment; focal error (%);
    Spearman correlation of the disparity with the true disparity on static pixels (mean, min).
    """
    if gt is None:
        path = gt_path(scene_dir)
        if path is None:
            return {}
        with np.load(path) as z:
            gt = {k: z[k] for k in ("depth", "dynamic_mask", "flow_fw", "c2w", "K")}
    dyn = np.asarray(gt["dynamic_mask"], bool)
    n = dyn.shape[0]
    out: dict[str, float] = {}
    if (scene_dir / "flow_fw").is_dir():
        epe, epe_dyn = [], []
        for i in range(n - 1):
            flow = io.read_flo(scene_dir / "flow_fw" / io.frame_name(i, ".flo"))
            epe.append(end_point_error(flow, gt["flow_fw"][i]))
            if dyn[i].any():
                epe_dyn.append(end_point_error(flow, gt["flow_fw"][i], dyn[i]))
        out["flow EPE fw (px)"] = float(np.mean(epe))
        out["flow EPE dynamic (px)"] = float(np.mean(epe_dyn)) if epe_dyn else float("nan")
    if (scene_dir / "masks").is_dir():
        masks = np.stack([io.read_mask(p) for p in io.list_frames(scene_dir / "masks")])
        ious = [iou(m, g) for m, g in zip(masks, dyn, strict=True)]
        out["mask IoU (mean)"] = float(np.mean(ious))
        out["mask IoU (min)"] = float(np.min(ious))
        out["mask false pos. (% static)"] = 100 * float((masks & ~dyn).sum() / max((~dyn).sum(), 1))
    if (scene_dir / "cameras.npz").exists():
        cams = io.read_cameras(scene_dir / "cameras.npz")
        reg = np.asarray(cams["registered"], bool)
        if reg.sum() >= 3:
            pe = pose_error(cams["c2w"][reg], gt["c2w"][reg])
            out["centre RMS (% path)"] = 100 * pe["centre_rms_rel"]
            out["rotation err (deg)"] = pe["rot_mean_deg"]
        out["focal err (%)"] = 100 * abs(cams["K"][0, 0] / gt["K"][0, 0] - 1)
    if (scene_dir / "disp").is_dir():
        rho = []
        for i in range(n):
            disp = io.read_disparity(scene_dir / "disp" / io.frame_name(i, ".npy"))
            rho.append(spearman(disp, 1.0 / gt["depth"][i], ~dyn[i]))
        out["depth Spearman (mean)"] = float(np.mean(rho))
        out["depth Spearman (min)"] = float(np.min(rho))
    return out


def sfm_figures(scene_dir: Path) -> dict[str, object]:
    """Registered frames, reprojection error, points and focal from sfm/summary.json."""
    sfm = scene_dir / "sfm" / "summary.json"
    if not sfm.exists():
        return {"registered": "failed (see logs/sfm.log)"}
    s = json.loads(sfm.read_text())
    return {
        "registered": f"{s['num_registered']}/{s['num_frames']}",
        "reproj err (px)": s["mean_reprojection_error_px"],
        "points": s["num_points3D"],
        "focal (px)": s["focal_px"],
    }


def scene_row(scene_dir: Path) -> dict[str, object]:
    row: dict[str, object] = {"scene": scene_dir.name}
    meta = json.loads((scene_dir / "frames.json").read_text())
    row["frames"] = meta["count"]
    row["size"] = "x".join(map(str, meta["size"]))
    row.update(sfm_figures(scene_dir))
    for stage, sec in stage_seconds(scene_dir).items():
        row[f"t {stage} (s)"] = sec
    row.update(ground_truth_quality(scene_dir))
    return row


def main(dirs: list[str]) -> None:
    rows = [scene_row(Path(d)) for d in dirs]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    width = max(len(k) for k in keys)
    print(f"{'':{width}}  " + "  ".join(f"{r['scene']:>22}" for r in rows))
    for k in keys[1:]:
        cells = []
        for r in rows:
            v = r.get(k, "-")
            cells.append(f"{v:>22.3f}" if isinstance(v, float) else f"{v!s:>22}")
        print(f"{k:{width}}  " + "  ".join(cells))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])

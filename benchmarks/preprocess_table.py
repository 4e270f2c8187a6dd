"""Print a table of the preprocessing of finished scenes: per-stage run time, SfM figures and,
for synthetic scenes, quality against the ground truth.

    python benchmarks/preprocess_table.py results/demo [results/<scene> ...]

Run times come from each rule's Snakemake benchmark file (results/<scene>/benchmarks/<rule>.tsv).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from nsff_core import io
from nsff_core.cameras import pose_error
from nsff_core.metrics import end_point_error, iou, spearman

STAGES = ("synthetic", "frames", "flow", "masks", "sfm", "depth")


def stage_seconds(scene_dir: Path) -> dict[str, float]:
    out = {}
    for stage in STAGES:
        f = scene_dir / "benchmarks" / f"{stage}.tsv"
        if f.exists():
            header, values = f.read_text().splitlines()[:2]
            out[stage] = float(dict(zip(header.split("\t"), values.split("\t"), strict=False))["s"])
    return out


def ground_truth_quality(scene_dir: Path) -> dict[str, float]:
    """Flow EPE, mask IoU, pose and focal error, depth Spearman against gt/scene.npz."""
    gt = np.load(scene_dir / "gt" / "scene.npz")
    n = gt["depth"].shape[0]
    epe = [
        end_point_error(
            io.read_flo(scene_dir / "flow_fw" / io.frame_name(i, ".flo")), gt["flow_fw"][i]
        )
        for i in range(n - 1)
    ]
    masks = [io.read_mask(p) for p in io.list_frames(scene_dir / "masks")]
    ious = [iou(m, g) for m, g in zip(masks, gt["dynamic_mask"], strict=True)]
    cams = io.read_cameras(scene_dir / "cameras.npz")
    pe = pose_error(cams["c2w"], gt["c2w"])
    rho = []
    for i in range(n):
        disp = io.read_disparity(scene_dir / "disp" / io.frame_name(i, ".npy"))
        rho.append(spearman(disp, 1.0 / gt["depth"][i], ~gt["dynamic_mask"][i]))
    return {
        "flow EPE fw (px)": float(np.mean(epe)),
        "mask IoU (mean)": float(np.mean(ious)),
        "mask IoU (min)": float(np.min(ious)),
        "centre RMS (% path)": 100 * pe["centre_rms_rel"],
        "rotation err (deg)": pe["rot_mean_deg"],
        "focal err (%)": 100 * abs(cams["K"][0, 0] / gt["K"][0, 0] - 1),
        "depth Spearman (mean)": float(np.mean(rho)),
        "depth Spearman (min)": float(np.min(rho)),
    }


def scene_row(scene_dir: Path) -> dict[str, object]:
    row: dict[str, object] = {"scene": scene_dir.name}
    meta = json.loads((scene_dir / "frames.json").read_text())
    row["frames"] = meta["count"]
    row["size"] = "x".join(map(str, meta["size"]))
    sfm = scene_dir / "sfm" / "summary.json"
    if sfm.exists():
        s = json.loads(sfm.read_text())
        row["registered"] = f"{s['num_registered']}/{s['num_frames']}"
        row["reproj err (px)"] = s["mean_reprojection_error_px"]
        row["points"] = s["num_points3D"]
        row["focal (px)"] = s["focal_px"]
    else:
        row["registered"] = "failed (see logs/sfm.log)"
    for stage, sec in stage_seconds(scene_dir).items():
        row[f"t {stage} (s)"] = sec
    if (scene_dir / "gt" / "scene.npz").exists() and (scene_dir / "disp").exists():
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

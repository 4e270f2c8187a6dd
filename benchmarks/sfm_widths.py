"""SfM at several training widths: registration, focal length, reprojection error and time.

    python benchmarks/sfm_widths.py --workdir /tmp/sfm-widths [--scenes benchmarks/real_clips.tsv]
        [--suite suite_ball,suite_dolly] [--widths 320,512,0] [--repo CHECKOUT] [--tag before]
        [--masks analysis|training] [--set sfm.max_size=null ...]

For every scene and training width (0 = the source width) the frames and the SfM masks are made
once with this checkout (cached in ``WORKDIR/<scene>_<width>_<masks>/``; ``--masks training``
makes them from the training frames' flow, as the workflow did before the masks moved to a
fixed analysis size), then the ``sfm`` stage
of ``--repo`` (default: this checkout; an older checkout gives the "before" numbers) runs on
them in its own process. Scenes come from a sheet with the columns scene, source, stride
(``benchmarks/real_clips.tsv``) and from suite presets (``--suite``, rendered at their 854x480
source size into ``WORKDIR/<preset>/source``; their rows add the camera-centre error in % of the
path and the focal-length error against the ground truth).

Printed per scene and width: registered frames, the mapper's attempts and model sizes, the
focal length at the training width and in source pixels (the figure that must agree across
widths), the horizontal field of view, the reprojection error (SfM pixels), the number of 3D
points and the wall time of the stage; per scene, the spread of the source-pixel focal lengths
over the widths, (max - min) / median. Results are kept in ``WORKDIR/results-<tag>.jsonl``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

#: run in a fresh process with the checkout under test first on sys.path
SFM_JOB = r"""
import inspect, json, math, sys, time
from pathlib import Path
data, out, over = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
from nsff_core.model import io
from nsff_core.config import SfmConfig
from nsff_core.errors import StageError
from nsff_core.priors.sfm import run_sfm
kw = {}
if "frames_json" in inspect.signature(run_sfm).parameters:
    kw["frames_json"] = data / "frames.json"
t0 = time.perf_counter()
rec = {}
try:
    s = run_sfm(data / "frames", data / "masks", out / "sfm", out / "cameras.npz",
                out / "poses_bounds.npy", SfmConfig(**over), scene=data.name, **kw)
    rec = {"ok": True, "registered": s["num_registered"], "frames": s["num_frames"],
           "reproj": s["mean_reprojection_error_px"], "points": s["num_points3D"],
           "sfm_size": s.get("sfm_size", s["hw"][::-1]),
           "attempts": [a["model_sizes"] for a in s.get("attempts", [])]
           or [sorted(s["model_sizes"].values(), reverse=True)]}
except StageError as err:
    rec = {"ok": False, "error": err.cause[:200]}
rec["seconds"] = time.perf_counter() - t0
print("SFM_RESULT " + json.dumps(rec))
"""


def prepare(name: str, source: str, stride: int, width: int, workdir: Path, masks_at: str) -> Path:
    """Frames, frames.json and the SfM masks of one scene at one width (cached).

    ``masks_at``: ``analysis`` = as the workflow makes them now (rule sfm_masks: the source
    frames at sfm.mask_size with their own flow, the same for every width); ``training`` =
    as before (DIS flow and the masks' SfM mode on the training frames)."""
    from nsff_core.config import FlowConfig, FramesConfig, MasksConfig, SfmConfig
    from nsff_core.priors import masks
    from nsff_core.priors.flow import compute_flow
    from nsff_core.priors.frames import extract_frames

    d = workdir / f"{name}_{width or 'src'}_{masks_at}"
    if (d / "masks").is_dir():
        return d
    cfg = FramesConfig(stride=stride, width=width or None)
    extract_frames(source, d / "frames", d / "frames.json", cfg, scene=name)
    if masks_at == "analysis":
        from nsff_core.priors.sfm_masks import compute_sfm_masks

        size = SfmConfig().mask_size
        compute_sfm_masks(d / "frames.json", d / "masks", MasksConfig(), FlowConfig(), size, name)
        return d
    flow = d / "flow_fw", d / "flow_bw", d / "flow_ok"
    compute_flow(d / "frames", *flow, FlowConfig(), scene=name, frames_json=d / "frames.json")
    mcfg = masks.sfm_masks_config(MasksConfig())
    masks.compute_masks(d / "frames", *flow, d / "masks", mcfg, scene=name)
    return d


def render_suite(preset: str, workdir: Path) -> Path:
    """Render a suite preset's source frames (PNG folder) and ground truth once."""
    d = workdir / preset
    if (d / "gt.npz").is_file():
        return d / "source"
    from nsff_core.model import io
    from nsff_core.model.synthetic import render_scene, source_frames, suite_config

    cfg = suite_config(preset, novel_offsets=())
    scene = render_scene(cfg)
    (d / "source").mkdir(parents=True, exist_ok=True)
    for i, rgb in enumerate(source_frames(scene, cfg)):
        io.write_image(d / "source" / io.frame_name(i), rgb)
    np.savez(d / "gt.npz", c2w=scene.c2w, K=scene.K)
    return d / "source"


def run_sfm_job(repo: Path, data: Path, out: Path, over: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.run(
        [sys.executable, "-c", SFM_JOB, str(data), str(out), json.dumps(over)],
        env=env,
        cwd=repo,  # ``python -c`` puts the working directory first on sys.path
        capture_output=True,
        text=True,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("SFM_RESULT "):
            return json.loads(line[len("SFM_RESULT ") :])
    return {"ok": False, "error": f"crashed (exit {proc.returncode}): {proc.stderr[-300:]}"}


def figures(rec: dict, data: Path, out: Path, gt: Path | None) -> dict:
    """Focal at training and source size, field of view, GT errors from the camera files."""
    from nsff_core.model import cameras as cam
    from nsff_core.model import io

    if not rec["ok"]:
        return rec
    c = io.read_cameras(out / "cameras.npz")
    w, K = int(c["hw"][1]), c["K"]
    src_w = json.loads((data / "frames.json").read_text())["source_size"][0]
    rec.update(
        fx=float(K[0, 0]),
        f_src=float(K[0, 0] * src_w / w),
        hfov=math.degrees(2 * math.atan(0.5 * w / K[0, 0])),
    )
    if gt is not None:
        z = np.load(gt)
        reg = c["registered"]
        err = cam.pose_error(c["c2w"][reg], z["c2w"][reg])
        rec["cam_pct"] = 100 * err["centre_rms_rel"]
        rec["focal_pct"] = 100 * abs(K[0, 0] * src_w / w / z["K"][0, 0] - 1)
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--scenes", type=Path, help="sheet with scene, source, stride columns")
    ap.add_argument("--suite", default="", help="comma-separated suite presets")
    ap.add_argument("--widths", default="320,512,0", help="training widths, 0 = source width")
    ap.add_argument("--repo", type=Path, default=REPO, help="checkout whose sfm stage runs")
    ap.add_argument("--tag", default="current", help="name of this run in the results file")
    ap.add_argument(
        "--masks",
        choices=("analysis", "training"),
        default="analysis",
        help="SfM masks at the fixed analysis size (the workflow) or from the training frames",
    )
    ap.add_argument("--set", action="append", default=[], help="sfm.KEY=VALUE (YAML value)")
    args = ap.parse_args()

    import yaml

    over = {}
    for item in args.set:
        key, value = item.split("=", 1)
        over[key.removeprefix("sfm.")] = yaml.safe_load(value)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    scenes: list[tuple[str, str, int, Path | None]] = []
    if args.scenes:
        with open(args.scenes) as fh:
            rows = csv.DictReader((ln for ln in fh if not ln.startswith("#")), delimiter="\t")
            for row in rows:
                src = Path(row["source"])
                src = src if src.is_absolute() else (REPO / src).resolve()
                scenes.append((row["scene"], str(src), int(row.get("stride") or 1), None))
    for preset in filter(None, args.suite.split(",")):
        source = render_suite(preset, workdir)
        scenes.append((preset, str(source), 1, workdir / preset / "gt.npz"))
    widths = [int(w) for w in args.widths.split(",")]

    results = workdir / f"results-{args.tag}.jsonl"
    header = (
        "| scene | width | registered | attempts (model sizes) | f train px | f source px | "
        "hfov deg | reproj px | points | cam % | focal % | time s |"
    )
    print(header)
    print("|" + "---|" * 12)
    for name, source, stride, gt in scenes:
        f_src = []
        for width in widths:
            data = prepare(name, source, stride, width, workdir, args.masks)
            out = workdir / "runs" / args.tag / data.name
            t0 = time.perf_counter()
            rec = figures(run_sfm_job(args.repo.resolve(), data, out, over), data, out, gt)
            rec.update(scene=name, width=width, tag=args.tag, wall=time.perf_counter() - t0)
            with open(results, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            if rec["ok"]:
                f_src.append(rec["f_src"])
                print(
                    f"| {name} | {width or 'source'} | {rec['registered']}/{rec['frames']} | "
                    f"{rec['attempts']} | {rec['fx']:.1f} | {rec['f_src']:.1f} | "
                    f"{rec['hfov']:.1f} | {rec['reproj']:.2f} | {rec['points']} | "
                    f"{rec.get('cam_pct', float('nan')):.2f} | "
                    f"{rec.get('focal_pct', float('nan')):.2f} | {rec['seconds']:.0f} |",
                    flush=True,
                )
            else:
                print(f"| {name} | {width or 'source'} | FAILED: {rec['error']} |", flush=True)
        if len(f_src) > 1:
            spread = (max(f_src) - min(f_src)) / float(np.median(f_src))
            print(f"| {name} | spread | | | | {100 * spread:.1f} % | | | | | | |", flush=True)


if __name__ == "__main__":
    main()

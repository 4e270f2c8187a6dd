"""End-point error of the weights-free flow on movers, across the gaps that held-out frames leave.

    python benchmarks/flow_gaps.py [--cache /tmp/nsff_flow_table] [--width 512]
        [--variants demo,suite_ball,...] [--sources 854x480] [--holdout-every 4]
        [--settings "default without prediction,default"] [--threads 1]

The flow rule's `flow_holdout` links consecutive *training* frames, so with
``eval.holdout_every: k`` every (k-1)-th pair spans two video frames and its movers travel twice
as far. Per synthetic scene (the demo and the suite presets, rendered through the frames rule
as in ``flow_table.py``, sharing its cache) and setting, this script runs the flow rule's own
sequence path (``nsff_core.priors.flow.dis_sequence``) over the training frames and prints the
mean end-point error in training pixels of the forward fields against the true flow (chained
through the held-out frame for the pairs that span one; pixels whose chained target leaves the
image are skipped), separately on mover pixels (the true dynamic mask of the pair's first frame)
and on the rest, for the pairs that span a gap and for consecutive ones, plus the share of
mover pixels with an error above 3 px.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

try:
    from flow_table import SETTINGS, add_scene_arguments, flows, scenes_and_settings
except ImportError:  # run as benchmarks/flow_gaps.py from elsewhere
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from flow_table import SETTINGS, add_scene_arguments, flows, scenes_and_settings

from nsff_core.config import FlowConfig
from nsff_core.holdout import training_frames
from nsff_core.priors.flow import dis_scale


def chained(flow_fw: list, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    """True flow from frame a to frame b (> a) composed from the per-frame forward flows, and
    the pixels whose every intermediate target stays inside the image."""
    import cv2

    h, w = flow_fw[a].shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    x, y = xs.copy(), ys.copy()
    inside = np.ones((h, w), bool)
    for f in range(a, b):
        fl = flow_fw[f].astype(np.float32)
        dx = cv2.remap(fl[..., 0], x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        dy = cv2.remap(fl[..., 1], x, y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        x, y = x + dx, y + dy
        inside &= (x > -0.5) & (x < w - 0.5) & (y > -0.5) & (y < h - 0.5)
    return np.stack([x - xs, y - ys], -1), inside


def main(argv=None) -> None:
    from nsff_core.priors.frames import read_source_frames

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_scene_arguments(ap, "854x480")
    ap.add_argument("--holdout-every", type=int, default=4)
    ap.add_argument("--settings", default="default without prediction,default")
    args = ap.parse_args(argv)
    scenes, names = scenes_and_settings(ap, args)

    print(
        "| scene | setting | movers, gap pairs | movers > 3 px | movers, consecutive "
        "| rest, gap pairs | rest, consecutive |"
    )
    print("|---|---|---|---|---|---|---|")
    for sc in scenes:
        n = len(sc.train)
        ids = training_frames(n, args.holdout_every).tolist()
        train = [sc.train[i] for i in ids]
        pairs = [(j, j + 1) for j in range(len(ids) - 1)]
        gts = [chained(sc.gt_fw, ids[j], ids[j + 1]) for j in range(len(ids) - 1)]
        for name in names:
            setting = SETTINGS[name]
            cfg = FlowConfig(**setting.flow)
            src = train
            if dis_scale(cfg, sc.frames_json) == "source":
                every = list(read_source_frames(sc.frames_json))
                src = [every[i] for i in ids]
            fields, _ = flows(setting, train, sc.frames_json, pairs, numbers=ids, src=src)
            acc: dict[str, list] = {"mg": [], "mc": [], "rg": [], "rc": [], "bad": []}
            for j, (fw, _bw) in enumerate(fields):
                gt, inside = gts[j]
                e = np.linalg.norm(fw - gt, axis=-1)
                dyn = sc.dynamic[ids[j]] & inside
                rest = ~sc.dynamic[ids[j]] & inside
                gap = "g" if ids[j + 1] - ids[j] > 1 else "c"
                if dyn.any():
                    acc["m" + gap].append(e[dyn])
                    if gap == "g":
                        acc["bad"].append(e[dyn] > 3)
                acc["r" + gap].append(e[rest])

            cols = {k: f"{np.concatenate(v).mean():.2f}" if v else "-" for k, v in acc.items()}
            print(
                f"| {sc.name} | {name} | {cols['mg']} | {cols['bad']} | {cols['mc']} "
                f"| {cols['rg']} | {cols['rc']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()

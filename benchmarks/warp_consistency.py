"""Does a trained ``grid_dynamic: deform`` field file a mover under one canonical place?

    python benchmarks/warp_consistency.py CHECKPOINT SCENE_DIR [--holdout-every K] [--points 400]
        [--component all|xy|z]

For a synthetic scene (``SCENE_DIR/gt/scene.npz``: true motion masks and optical flow) and a
checkpoint trained on it (``benchmarks/train_demo.py --out DIR`` writes ``DIR/train/last.ckpt``;
give the same ``--holdout-every``): for each pair of consecutive training frames, mover pixels
of the first frame and, through the true flow, the same material points in the second are
rendered to their expected surface points, and both are mapped into the canonical field
(``x + offset(x, t)``). Printed per pair, as medians in cells of the finest canonical level:
the distance between the two canonical points (``canonical``) and between the two raw NDC
points (``raw``); where the first point's own scene flow takes it (x + f) against the true
second point (``flow err``); and the canonical points of x at t and of x + f at t + 1, the
pair that ``train.lambda_canonical`` pulls together (``self``). A warp that shares the mover
across frames brings the canonical points closer than the raw ones; a ratio above 1 means each
frame's mover is stored in its own place of the canonical field. A large ``flow err`` means
the field's scene flow does not follow the mover, so a warp that follows the flow cannot
either; a small ``self`` with a large ``canonical`` means the warp follows the flow.
``--component``: the distances over all three axes (default), over x and y only (across the
image, what blurs a mover's texture), or along z only (NDC depth; the rendered surface point of
a half-transparent mover mixes its depth with the background's, so z is the noisier part).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    from nsff_core.holdout import training_frames
    from nsff_core.model.checkpoint import load_system
    from nsff_core.model.data import make_batch
    from nsff_core.model.fields_planes import PlaneDeformDynamicField
    from nsff_core.workflow.stages.scene import load_scene

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("scene_dir")
    ap.add_argument("--holdout-every", type=int, default=0)
    ap.add_argument("--points", type=int, default=400)
    ap.add_argument("--component", choices=["all", "xy", "z"], default="all")
    args = ap.parse_args()
    system = load_system(args.checkpoint)
    field = system.dynamic_field
    if not isinstance(field, PlaneDeformDynamicField):
        sys.exit(f"{args.checkpoint} has no canonical field (train.grid_dynamic is not deform)")
    gt_path = Path(args.scene_dir) / "gt" / "scene.npz"
    if not gt_path.is_file():
        sys.exit(f"{gt_path} missing: this check needs a synthetic scene's ground truth")
    gt = np.load(gt_path)
    data = load_scene(args.scene_dir, holdout_every=args.holdout_every)
    n = gt["images"].shape[0]
    ids = list(training_frames(n, args.holdout_every)) if args.holdout_every else list(range(n))
    if len(ids) != data.num_frames:
        sys.exit(f"{len(ids)} training frames here, {data.num_frames} in the scene: check K")
    cells = (field.cfg.dynamic_resolutions[-1] - 1) / 2
    h, w = data.hw
    gh, gw = gt["dynamic_mask"].shape[1:3]  # the ground truth may be larger than training
    masks = [
        cv2.resize(m.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        for m in gt["dynamic_mask"]
    ]
    axes = {"all": slice(0, 3), "xy": slice(0, 2), "z": slice(2, 3)}[args.component]
    rng = np.random.default_rng(0)
    rows = []
    print(
        f"{'frames':>8s} {'points':>6s} {'canonical':>9s} {'raw':>6s} {'flow err':>8s} "
        f"{'self':>6s}  (median, cells)"
    )
    for a in range(len(ids) - 1):
        fa, fb = ids[a], ids[a + 1]
        if fb != fa + 1:
            continue
        ys, xs = np.nonzero(masks[fa])
        if len(ys) == 0:
            continue
        pick = rng.choice(len(ys), min(args.points, len(ys)), replace=False)
        ys, xs = ys[pick], xs[pick]
        # the true flow at the ground truth's own size, read at the pixel's centre
        gy = np.clip(((ys + 0.5) * gh / h).astype(int), 0, gh - 1)
        gx = np.clip(((xs + 0.5) * gw / w).astype(int), 0, gw - 1)
        flow = gt["flow_fw"][fa][gy, gx] * np.array([w / gw, h / gh])
        xb, yb = np.rint(xs + flow[:, 0]).astype(int), np.rint(ys + flow[:, 1]).astype(int)
        ok = (xb >= 0) & (xb < w) & (yb >= 0) & (yb < h)
        ok &= masks[fb][yb.clip(0, h - 1), xb.clip(0, w - 1)]
        canon, raw = [], []
        with torch.no_grad():
            for t, yy, xx in ((a, ys[ok], xs[ok]), (a + 1, yb[ok], xb[ok])):
                batch = make_batch(data, t, torch.as_tensor(yy * w + xx))
                out = system.render(batch.origins, batch.dirs, batch.t, training=False)
                q = field(out.surface_point.float(), batch.t)
                canon.append(q.canonical.numpy())
                raw.append((out.surface_point.float() * field.scale).numpy())
                if t == a:  # the first point moved by its own forward scene flow
                    moved = out.surface_point.float() + q.scene_flow_fw.float()
                    ahead = field(moved, batch.t + 1)
                    flowed = (moved * field.scale).numpy()
                    canon_self = ahead.canonical.numpy()

        def med(p, q):
            return np.median(np.linalg.norm((p - q)[:, axes], axis=1)) * cells

        dc, dr = med(canon[0], canon[1]), med(raw[0], raw[1])
        df, ds = med(flowed, raw[1]), med(canon[0], canon_self)
        rows.append((dc, dr, df, ds))
        print(f"{fa:>3d}->{fb:<3d} {int(ok.sum()):>6d} {dc:>9.2f} {dr:>6.2f} {df:>8.2f} {ds:>6.2f}")
    if not rows:
        sys.exit("no pair of consecutive training frames with movers")
    dc, dr, df, ds = np.mean(rows, axis=0)
    print(
        f"mean of the medians: canonical {dc:.2f} cells, raw {dr:.2f} cells, ratio "
        f"{dc / dr:.2f}; flow err {df:.2f}, self {ds:.2f} cells"
    )


if __name__ == "__main__":
    main()

"""Where a trained model puts the far surfaces of a synthetic scene: one row per training frame.

    python benchmarks/far_weights.py --ckpt /tmp/dolly/train/last.ckpt \\
        --scene-dir results/suite_dolly [--frames 1,22] [--share 0.3]

Renders training frames at their own cameras (``test`` split geometry, integer times) and, on the
farthest ``--share`` of each frame's static pixels (by the ground-truth depth of the scene's
``gt/scene.npz``), prints:

- **backdrop**: the mean weight of the static field's last sample (NDC z = 1, infinity; with
  ``train.static_last_delta`` 100 it is an opaque backdrop, docs/method.md);
- **depth ratio**: the median of rendered / true depth, the rendered depth put in the ground
  truth's units by the median ratio on the nearest ``--share`` of static pixels;
- **spread**: the median standard deviation of the ray weights along the NDC ray parameter,
  and the bin width 1 / num_samples beside it;
- PSNR of those far pixels and of the near ones.

A far wall painted on the backdrop has a large backdrop share and a depth ratio far above 1; a
camera that moves towards it then renders it as a zoom blur. Needs a synthetic scene (ground
truth depth); frames must be training frames of the run (not held out).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def pixel_centres(full: int, size: int) -> np.ndarray:
    """Indices into a ``full``-long axis of the centres of ``size`` equal cells."""
    return ((np.arange(size) + 0.5) * full / size).astype(int)


def camera_depth(points_ndc, c2w, k_ndc):
    """Depth along the camera's viewing axis (NSFF units) of NDC points (R, 3)."""
    from nsff_core.model.rays import ndc_to_world

    world = ndc_to_world(points_ndc, k_ndc)
    return -((world - c2w[:3, 3]) @ c2w[:3, 2])  # OpenGL axes: the camera looks down -z


def frame_row(system, cams, gt, frame: int, share: float, chunk: int = 4096) -> dict:
    import torch

    from nsff_core.model.rays import get_rays, rays_to_ndc

    meta = system.meta
    ids = list(meta.frame_ids) if meta.frame_ids is not None else list(range(meta.num_frames))
    if frame not in ids:
        raise SystemExit(f"frame {frame} is not a training frame of this run (held out?)")
    h, w = (int(v) for v in cams["hw"])
    c2w = torch.as_tensor(meta.normalization.apply_c2w(cams["c2w"][frame]), dtype=torch.float32)
    origins, dirs = rays_to_ndc(*get_rays(cams["K"], c2w, (h, w)), meta.K)
    ys = pixel_centres(gt["depth"].shape[1], h)
    xs = pixel_centres(gt["depth"].shape[2], w)
    true_depth = gt["depth"][frame][ys][:, xs].reshape(-1)
    static = ~gt["dynamic_mask"][frame][ys][:, xs].reshape(-1)
    image = gt["images"][frame][ys][:, xs].reshape(-1, 3) / 255.0
    t = torch.full((h * w,), ids.index(frame), dtype=torch.long)
    parts = {"z": [], "w": [], "rgb": []}
    with torch.inference_mode():
        for s in range(0, h * w, chunk):
            out = system.render(
                origins[s : s + chunk], dirs[s : s + chunk], t[s : s + chunk], False
            )
            parts["z"].append(out.z.float())
            parts["w"].append(out.weights.float())
            parts["rgb"].append(out.image.rgb.float())
        z, wt = torch.cat(parts["z"]), torch.cat(parts["w"])
        rgb = torch.cat(parts["rgb"]).numpy()
        total = wt.sum(1).clamp_min(1e-6)
        mean = (wt * z).sum(1) / total
        spread = ((wt * (z - mean[:, None]) ** 2).sum(1) / total).sqrt().numpy()
        depth = camera_depth(origins + mean[:, None] * dirs, c2w, meta.K).numpy()
    far = static & (true_depth >= np.quantile(true_depth[static], 1.0 - share))
    near = static & (true_depth <= np.quantile(true_depth[static], share))
    scale = np.median(true_depth[near] / depth[near])

    def psnr(mask):
        return float(-10.0 * np.log10(np.mean((rgb[mask] - image[mask]) ** 2)))

    return {
        "frame": frame,
        "backdrop": float(wt[torch.as_tensor(far), -1].mean()),
        "depth ratio": float(np.median(depth[far] * scale / true_depth[far])),
        "spread": float(np.median(spread[far])),
        "bin": 1.0 / z.shape[1],
        "far PSNR": psnr(far),
        "near PSNR": psnr(near),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", required=True, help="train/last.ckpt of a run")
    ap.add_argument("--scene-dir", required=True, help="the scene's results folder (gt/ inside)")
    ap.add_argument("--frames", default="1,22", help="training frames, comma-separated")
    ap.add_argument("--share", type=float, default=0.3, help="share of static pixels: far / near")
    args = ap.parse_args()
    if not 0.0 < args.share <= 0.5:
        sys.exit(f"--share must be in (0, 0.5], got {args.share}")
    scene = Path(args.scene_dir)
    gt_path = scene / "gt" / "scene.npz"
    if not gt_path.is_file():
        sys.exit(f"{scene} has no ground truth ({gt_path}): this needs a synthetic scene")

    import torch

    from nsff_core.model import io
    from nsff_core.model.checkpoint import load_system

    torch.set_grad_enabled(False)
    system = load_system(args.ckpt)
    cams = io.read_cameras(scene / "cameras.npz")
    gt = np.load(gt_path)
    rows = [frame_row(system, cams, gt, int(f), args.share) for f in args.frames.split(",")]
    print(
        f"{'frame':>5s} {'backdrop':>9s} {'depth ratio':>12s} {'spread':>7s} {'bin':>7s} "
        f"{'far PSNR':>9s} {'near PSNR':>10s}"
    )
    for r in rows:
        print(
            f"{r['frame']:5d} {r['backdrop']:9.2f} {r['depth ratio']:12.2f} {r['spread']:7.4f} "
            f"{r['bin']:7.4f} {r['far PSNR']:9.2f} {r['near PSNR']:10.2f}"
        )


if __name__ == "__main__":
    main()

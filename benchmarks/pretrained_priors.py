"""Per-stage time of the pretrained prior backends on N frames (random weights, no download).

    python benchmarks/pretrained_priors.py [--frames 30] [--size 512x288] [--device cpu|cuda]

Renders N frames of the synthetic scene at the given size and times, with randomly initialised
weights (the timing does not depend on them, except Mask R-CNN's mask head, which sees fewer
instances than with real weights): RAFT-Large (20 iterations, N-1 pairs, both directions),
DPT-Large and DPT-Hybrid (N frames), Mask R-CNN v2 (N frames). Each row includes building the
model; the per-item column excludes it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    import torch

    from nsff_core.config import SyntheticConfig
    from nsff_core.model.synthetic import render_scene

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--size", default="512x288")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--only", nargs="*", default=["raft", "dpt_large", "dpt_hybrid", "maskrcnn"])
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    frames = list(
        render_scene(
            SyntheticConfig(num_frames=args.frames, width=w, height=h, novel_offsets=())
        ).images
    )
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"device: {name} ({torch.get_num_threads()} threads); {args.frames} frames {w}x{h}")
    print(f"{'backend':12s} {'build s':>8s} {'total s':>8s} {'per item':>10s}")
    tmp = Path(tempfile.mkdtemp())
    for backend in args.only:
        t0 = time.perf_counter()
        if backend == "raft":
            from nsff_core.priors.nets.raft import compute_flow_raft, load_raft

            model = load_raft(None, args.device)
            t1 = time.perf_counter()
            compute_flow_raft(
                frames, tmp / "fw", tmp / "bw", tmp / "ok", (h, w), model=model,
                device=args.device,
            )  # fmt: skip
            items, unit = args.frames - 1, "pair"
        elif backend.startswith("dpt"):
            from nsff_core.priors.nets.dpt import compute_depth_dpt, load_dpt

            model = load_dpt(backend, None, args.device)
            t1 = time.perf_counter()
            compute_depth_dpt(frames, tmp / backend, (h, w), backend, model=model)
            items, unit = args.frames, "frame"
        elif backend == "maskrcnn":
            from nsff_core.priors.nets.maskrcnn import compute_masks_maskrcnn, load_maskrcnn

            model = load_maskrcnn(None, args.device)
            t1 = time.perf_counter()
            compute_masks_maskrcnn(frames, tmp / "masks", (h, w), model=model, device=args.device)
            items, unit = args.frames, "frame"
        else:
            raise SystemExit(f"unknown backend {backend}")
        if args.device == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        per = (t2 - t1) / items
        print(f"{backend:12s} {t1 - t0:8.1f} {t2 - t0:8.1f} {per:8.2f} s/{unit}")


if __name__ == "__main__":
    main()

"""How much of a scene's training-view PSNR is fine detail: its frames against copies of
themselves at a lower resolution.

A model that reproduces every frame exactly at 1/s of its resolution (area-downsampled, then
bilinearly upsampled) scores the printed PSNR; a training-view score near it means the field
resolves detail at about that scale. High-frequency textures and JPEG artefacts put this
ceiling low: a target above it asks for a per-pixel fit, not a better scene model.

    python benchmarks/detail_ceiling.py results/demo results/stop [--scales 2,1.5,1.25]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nsff_core.model import io  # noqa: E402
from nsff_core.model.metrics import psnr  # noqa: E402


def copy_psnr(img: np.ndarray, scale: float) -> float:
    """PSNR of ``img`` (H, W, 3) float in [0, 1] against its copy at 1/scale resolution."""
    import cv2

    h, w = img.shape[:2]
    small = cv2.resize(
        img, (max(1, round(w / scale)), max(1, round(h / scale))), interpolation=cv2.INTER_AREA
    )
    return psnr(cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), img)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scene_dirs", nargs="+", type=Path, help="scene folders with frames/")
    ap.add_argument("--scales", default="2,1.5,1.25", help="resolution divisors")
    args = ap.parse_args()
    scales = [float(s) for s in args.scales.split(",")]
    head = ["scene", "frames", "size"] + [f"1/{s:g} res (dB)" for s in scales]
    rows = []
    for d in args.scene_dirs:
        names = io.list_frames(d / "frames")
        if not names:
            sys.exit(f"{d}: no frames in {d / 'frames'} (run the workflow's frames rule first)")
        scores = np.zeros((len(names), len(scales)))
        for i, name in enumerate(names):
            img = io.read_image(name).astype(np.float32) / 255.0
            scores[i] = [copy_psnr(img, s) for s in scales]
        h, w = img.shape[:2]
        rows.append([d.name, str(len(names)), f"{w}x{h}"] + [f"{v:.2f}" for v in scores.mean(0)])
    widths = [max(len(r[k]) for r in [head] + rows) for k in range(len(head))]
    for r in [head] + rows:
        print("  ".join(c.ljust(n) for c, n in zip(r, widths, strict=True)))


if __name__ == "__main__":
    main()

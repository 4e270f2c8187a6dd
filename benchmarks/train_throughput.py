"""Training throughput (rays/s) of NSFF steps on the synthetic scene, per model size.

    python benchmarks/train_throughput.py [--steps 5] [--device cpu|cuda] [--size 160x90]
        [--frames 24] [--models small planes nsff_pl]

The scene's priors are its ground truth (the figure measures the model, renderer and losses,
not the priors). Sizes: a small MLP, the demo's plane field (preset cpu_demo) and nsff_pl's
default (8x256 MLPs, 128 samples, batch 512), at 160x90 with 24 frames unless told otherwise
(nsff_pl's full configuration is ``--size 512x288 --frames 30``), each in fp32 and, where the
device has fast bf16 (CUDA with bf16, CPUs with AMX), with bf16 autocast (what ``precision: auto``
picks). Each row times ``--steps`` optimizer steps after one warm-up step; on CUDA it also
prints the peak GPU memory of those steps.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nsff_core.config import SyntheticConfig, TrainConfig
from nsff_core.model import losses as L
from nsff_core.model.data import FrameSampler, SceneMeta, make_batch, scene_data_from_arrays
from nsff_core.model.synthetic import render_scene
from nsff_core.model.system import NSFFSystem, loss_terms
from nsff_core.workflow.stages.train import cpu_has_fast_bf16

SIZES = {
    "small": (
        "small MLP (4x64, 32 samples)",
        dict(width=64, depth=4, num_samples=32, batch_size=512),
    ),
    "planes": (
        "cpu_demo planes (32 samples, batch 1024)",
        dict(field="planes", num_samples=32, batch_size=1024, grid_tv=0.0, lambda_mask=0.1),
    ),
    "nsff_pl": (
        "nsff_pl default (8x256, 128 samples)",
        dict(width=256, depth=8, num_samples=128, batch_size=512),
    ),
}


def step(system, opt, sampler, data, weights, device, bf16) -> None:
    """One optimizer step on a batch of one frame."""
    t = sampler.next_frame()
    batch = make_batch(data, t, sampler.next_pixels(t)).to(device)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        out = system.render(batch.origins, batch.dirs, batch.t, training=True)
        loss = L.total_loss(loss_terms(out, batch, system.P, system.K, 1), weights)
    opt.zero_grad()
    loss.backward()
    opt.step()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", default="160x90", help="WxH of the synthetic scene")
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--models", nargs="*", choices=list(SIZES), default=list(SIZES))
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    scene = render_scene(
        SyntheticConfig(num_frames=args.frames, width=w, height=h, novel_offsets=())
    )
    ok = np.ones(scene.flow_fw.shape[:3], bool)
    data = scene_data_from_arrays(
        scene.images,
        1 / scene.depth,
        scene.flow_fw,
        scene.flow_bw,
        ok,
        ok,
        scene.dynamic_mask,
        scene.K,
        scene.c2w,
        float(scene.depth.min()),
    )
    if args.device == "cuda":
        name = torch.cuda.get_device_name()
        has_bf16 = torch.cuda.is_bf16_supported()
    else:
        name = f"cpu, {torch.get_num_threads()} threads"
        has_bf16 = cpu_has_fast_bf16()
    cuda = args.device == "cuda"
    print(
        f"device: {name}; {w}x{h}, {args.frames} frames; "
        f"bf16 = autocast (precision auto: {has_bf16})"
    )
    head = f"{'model':42s} {'precision':>9s} {'s/step':>8s} {'steps/s':>8s} {'rays/s':>8s}"
    print(head + (f" {'peak GiB':>9s}" if cuda else ""))
    for key in args.models:
        label, size = SIZES[key]
        for bf16 in (False, True) if has_bf16 else (False,):
            cfg = TrainConfig(**size)
            torch.manual_seed(0)
            system = NSFFSystem(cfg, SceneMeta(data.num_frames, data.K, data.c2w), 100)
            system = system.to(args.device)
            opt = torch.optim.Adam(system.parameters(), lr=cfg.lr)
            sampler = FrameSampler(data.num_frames, data.hw, cfg.batch_size)
            weights = L.weights_at(epoch=0.0)

            step(system, opt, sampler, data, weights, args.device, bf16)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                step(system, opt, sampler, data, weights, args.device, bf16)
            if cuda:
                torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / args.steps
            prec = "bf16" if bf16 else "fp32"
            row = f"{label:42s} {prec:>9s} {dt:8.3f} {1 / dt:8.1f} {cfg.batch_size / dt:8.0f}"
            if cuda:
                row += f" {torch.cuda.max_memory_allocated() / 2**30:9.2f}"
            print(row, flush=True)
            del system, opt


if __name__ == "__main__":
    main()

"""NSFF on the demo scene for a fixed wall-clock budget: quality and speed in one table.

    snakemake --cores all results/demo/disp       # the priors, once (about 30 s)
    python benchmarks/train_demo.py [--minutes 10 | --steps N] [--preset cpu_demo]
        [--out /tmp/nsff_bench] [--scene-dir results/demo] [--holdout-every K] [--set KEY=VALUE ...]

Trains the scene's preset (config.yaml ``train`` overridden by ``train_presets.<preset>``) on the
workflow's own priors under ``results/demo`` for ``--minutes`` of wall-clock time (a short
calibration sets the step budget so that the learning-rate schedule ends on time; Lightning's
``max_time`` is the hard stop), then renders the training cameras (split ``test``) and the
held-out ground-truth cameras and prints:

- training-view PSNR/SSIM (the ``test`` split against the training frames), full and dynamic
  region;
- novel-view PSNR/SSIM at the held-out cameras, and the trivial baseline (each held-out image
  scored against the training frame of the same time);
- training rays/s of the run;
- with ``--holdout-every K``: the frames K-1, 2K-1, ... are left out of training (as
  ``eval.holdout_every``; the flow between training frames is computed into
  ``<scene-dir>/flow_holdout`` with the default flow settings when it is missing or of another
  K), and the held-out frames' PSNR/SSIM (full and dynamic region) are printed beside the
  nearest-frame baseline. This works on any scene, real videos included; the held-out-view rows
  need a synthetic scene's ground truth.

``--steps N`` trains a fixed number of steps instead of a wall-clock budget (comparable between
runs on a busy machine).

``--throughput`` adds rays/s at nsff_pl's default model size (8x256 MLPs, 128 samples, batch
512, 160x90) in fp32 and in the precision ``auto`` picks, from ``train_throughput.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nsff_core.config import TrainConfig, from_dict  # noqa: E402
from nsff_core.workflow.sheet import number_in_text  # noqa: E402


def preset_config(preset: str | None) -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    train = dict(cfg.get("train") or {})
    if preset:
        train.update(cfg["train_presets"][preset])
    return train


def ensure_holdout_flow(scene_dir: Path, every: int) -> None:
    """``scene_dir/flow_holdout`` for ``every`` (default flow settings), unless it is there.
    Two runs started together on one scene take turns (a lock file beside the folder): the
    second finds the first one's flow instead of writing the same folder at the same time."""
    import fcntl

    from nsff_core.config import FlowConfig
    from nsff_core.priors.flow import HOLDOUT_JSON, compute_holdout_flow

    facts = scene_dir / "flow_holdout" / HOLDOUT_JSON
    with open(scene_dir / ".flow_holdout.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if facts.is_file() and json.loads(facts.read_text()).get("holdout_every") == every:
            return
        frames_json = scene_dir / "frames.json"
        compute_holdout_flow(
            scene_dir / "frames",
            scene_dir / "flow_holdout",
            FlowConfig(),
            every,
            frames_json=frames_json if frames_json.is_file() else None,
        )


def calibrate(scene_dir: Path, cfg: TrainConfig, steps: int = 12, holdout_every: int = 0) -> float:
    """Seconds per training step of ``cfg`` on this machine (after 2 warm-up steps)."""
    import torch

    from nsff_core.model import losses as L
    from nsff_core.model.data import FrameSampler, SceneMeta, make_batch
    from nsff_core.model.system import NSFFSystem, loss_terms
    from nsff_core.workflow.stages.scene import load_scene
    from nsff_core.workflow.stages.train import device_settings

    data = load_scene(scene_dir, holdout_every=holdout_every)
    settings = device_settings(cfg.precision)
    device = "cuda" if settings["accelerator"] == "gpu" else "cpu"
    # without hw the plane fields cover the NDC cube (grid_bounds rays needs the frame size)
    system = NSFFSystem(cfg, SceneMeta(data.num_frames, data.K, data.c2w), 100)
    system = system.to(device)
    opt = torch.optim.Adam(system.parameters(), lr=1e-4)
    sampler = FrameSampler(data.num_frames, data.hw, cfg.batch_size)
    bf16 = settings["precision"] == "bf16-mixed"
    t0 = 0.0
    for i in range(steps + 2):
        if i == 2:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        t = sampler.next_frame()
        batch = make_batch(data, t, sampler.next_pixels(t)).to(device)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            out = system.render(batch.origins, batch.dirs, batch.t, training=True)
            loss = L.total_loss(
                loss_terms(out, batch, system.P, system.K, 1), L.weights_at(epoch=0.0)
            )
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def parse_settings(items: list[str]) -> dict:
    """``--set`` items ``KEY=VALUE`` -> {key: YAML value}; a number that YAML 1.1 reads as text
    (``5e-4``, no decimal point) is read as the number."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}")
        parsed = yaml.safe_load(value)
        number = number_in_text(parsed)
        out[key] = parsed if number is None else number
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scene-dir", default=str(REPO / "results" / "demo"))
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--steps", type=int, default=None, help="a step budget instead of minutes")
    ap.add_argument("--holdout-every", type=int, default=0)
    ap.add_argument("--preset", default="cpu_demo")
    ap.add_argument("--out", default="/tmp/nsff_bench")
    ap.add_argument("--throughput", action="store_true")
    ap.add_argument(
        "--novel-poses",
        choices=["relative", "aligned", "both"],
        default="relative",
        help="placement of the held-out cameras (eval.novel_poses); both: also score 'aligned'",
    )
    ap.add_argument(
        "--set",
        nargs="*",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="train settings (YAML values); repeat --set or list several after one",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    scene_dir = Path(args.scene_dir)
    name = scene_dir.name
    gt = scene_dir / "gt" / "scene.npz"
    if not (scene_dir / "disp").is_dir() or not (scene_dir / "masks").is_dir():
        sys.exit(f"{scene_dir} has no priors: run `snakemake --cores all priors` for it first")
    if not gt.is_file() and not args.holdout_every:
        sys.exit(
            f"{scene_dir} has no ground truth: give --holdout-every K to score held-out frames"
        )
    if args.holdout_every:
        ensure_holdout_flow(scene_dir, args.holdout_every)
    out = Path(args.out)
    train = preset_config(args.preset)
    try:
        train.update(parse_settings(args.set))
    except ValueError as err:
        sys.exit(str(err))
    train.pop("max_steps", None)
    cfg = from_dict(TrainConfig, train)
    if args.steps:
        steps = args.steps
        train.update(max_steps=steps, log_every=max(1, steps // 10))
        print(f"budget {steps} steps")
    else:
        s_per_step = calibrate(scene_dir, cfg, holdout_every=args.holdout_every)
        steps = max(10, int(args.minutes * 60 / s_per_step * 0.97))
        train.update(max_steps=steps, max_time_minutes=args.minutes, log_every=max(1, steps // 10))
        print(f"calibration: {s_per_step:.3f} s/step -> budget {steps} steps in {args.minutes} min")
    cfg = from_dict(TrainConfig, train)

    import pandas as pd

    from nsff_core.model import io
    from nsff_core.workflow.stages.evaluate import evaluate_scene
    from nsff_core.workflow.stages.render_split import render_split
    from nsff_core.workflow.stages.train import train_scene

    t0 = time.perf_counter()
    ckpt = train_scene(scene_dir, out / "train", cfg, scene=name, holdout_every=args.holdout_every)
    train_s = time.perf_counter() - t0
    done = int(pd.read_csv(out / "train" / "metrics.csv")["step"].max()) + 1
    t1 = time.perf_counter()
    render_split(ckpt, scene_dir / "cameras.npz", "test", out / "render", scene=name)
    render_s = time.perf_counter() - t1
    m = evaluate_scene(
        ckpt,
        scene_dir / "cameras.npz",
        scene_dir / "frames",
        scene_dir / "masks",
        out / "render" / "test",
        out / "eval" / "metrics.json",
        gt=gt if gt.is_file() else None,
        scene=name,
        holdout_every=args.holdout_every,
        novel_poses="aligned" if args.novel_poses == "aligned" else "relative",
    )
    aligned = None
    if args.novel_poses == "both" and m["novel"] and m["novel"].get("views"):
        from nsff_core.workflow.stages.evaluate import Scorer, evaluate_novel_views

        aligned = evaluate_novel_views(
            ckpt,
            io.read_cameras(scene_dir / "cameras.npz"),
            io.list_frames(scene_dir / "frames"),
            gt,
            out / "eval" / "novel_aligned",
            Scorer(),
            4096,
            name,
            args.holdout_every,
            "aligned",
        )
    test, novel, held = m["test"]["mean"], m["novel"], m["holdout"]
    # the settings the run used, "auto" ones decided (rule train's config.json)
    resolved = json.loads((out / "train" / "config.json").read_text())["train"]
    rows = [
        ("scene", f"{name} ({m['frames']} training frames)"),
        ("preset", " ".join([args.preset, *args.set])),
        ("field / samples / batch", f"{cfg.field} / {cfg.num_samples} / {cfg.batch_size}"),
        ("static_last_delta", f"{resolved['static_last_delta']:g} (set: {cfg.static_last_delta})"),
        ("training wall time", f"{train_s / 60:.1f} min ({done} steps)"),
        ("training rays/s", f"{done * cfg.batch_size / train_s:.0f}"),
        ("training-view PSNR / SSIM", f"{test['psnr']:.2f} dB / {test['ssim']:.3f}"),
        (
            "training-view PSNR / SSIM, dynamic region",
            f"{test['psnr_dynamic']:.2f} dB / {test['ssim_dynamic']:.3f}",
        ),
    ]
    if novel and novel.get("views"):
        nm, nb = novel["mean"], novel["baseline"]["mean"]
        rows += [
            (
                f"novel-view PSNR / SSIM (held-out cameras, {novel['poses']})",
                f"{nm['psnr']:.2f} dB / {nm['ssim']:.3f}",
            ),
            ("trivial baseline PSNR / SSIM", f"{nb['psnr']:.2f} dB / {nb['ssim']:.3f}"),
            ("novel-view gain over baseline", f"{nm['psnr'] - nb['psnr']:+.2f} dB"),
        ]
    if aligned:
        am = aligned["mean"]
        rows.append(
            (
                "novel-view PSNR / SSIM (held-out cameras, aligned)",
                f"{am['psnr']:.2f} dB / {am['ssim']:.3f} "
                f"(rotation residual {aligned['alignment']['rotation_residual_deg']:.2f} deg)",
            )
        )
    if held:
        hm, hb = held["mean"], held["baseline"]["mean"]
        rows += [
            (
                f"held-out frames PSNR / SSIM ({held['frames']}, every {held['every']})",
                f"{hm['psnr']:.2f} dB / {hm['ssim']:.3f}",
            ),
            ("held-out frames PSNR, dynamic region", f"{hm['psnr_dynamic']:.2f} dB"),
            (
                "nearest-frame baseline PSNR / SSIM",
                f"{hb['psnr']:.2f} dB / {hb['ssim']:.3f} (dynamic {hb['psnr_dynamic']:.2f} dB)",
            ),
            ("held-out gain over baseline", f"{hm['psnr'] - hb['psnr']:+.2f} dB"),
        ]
    frames = len(io.list_frames(out / "render" / "test"))
    rows.append(("render of the test split", f"{render_s:.0f} s ({render_s / frames:.1f} s/frame)"))
    print()
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:{width}s}  {v}")
    (out / "summary.json").write_text(json.dumps(dict(rows), indent=1))
    if args.throughput:
        import subprocess

        subprocess.run(
            [sys.executable, str(REPO / "benchmarks" / "train_throughput.py")], check=True
        )
    scores = [test["psnr"]] + [x["mean"]["psnr"] for x in (novel, held) if x and x.get("mean")]
    assert all(math.isfinite(float(v)) for v in scores)


if __name__ == "__main__":
    main()

"""Training throughput (rays/s) and quality per ray of NSFF training on the synthetic scene.

    python benchmarks/train_throughput.py [--device cpu|cuda] [--size 160x90] [--frames 24]
        [--models small planes gpu_fast nsff_pl] [--batch 512 4096] [--precision fp32 bf16]
        [--resident host device] [--compile none fields render] [--steps 10] [--warmup 3]
        [--sync-check] [--psnr-rays 4000000] [--preset-seconds 170] [--out rows.jsonl]

Every row trains through the workflow's own training function (Lightning, the divergence
guard, the ray sampler, the optimizer: what ``snakemake`` runs), on the synthetic scene with
its ground truth as priors (the figure measures the model, renderer and losses, not the
priors). A row times ``--steps`` steps after ``--warmup`` steps (compilation happens in the
warm-up) and prints s/step, steps/s, rays/s and, on CUDA, the peak GPU memory of the timed
steps. Rows are the product of ``--models`` x ``--resident`` x ``--batch`` x ``--precision`` x
``--compile`` (bf16 only where the device has fast bf16); nsff_pl's full configuration is
``--size 512x288 --frames 30``.

Models: ``small`` (4x64 MLP, 32 samples), ``planes`` (preset cpu_demo's field), ``gpu_fast``
(preset gpu_fast of config.yaml) and ``nsff_pl`` (8x256 MLPs, 128 samples, nsff_pl's default).

``--sync-check``: first, 6 steps of each model with device-resident batches under
``torch.cuda.set_sync_debug_mode("warn")``: the host synchronisations of a training step, by
source line (CUDA only). ``--psnr-rays R``: the gpu_fast field trained on R rays at batch 512
and at batch 4096 (same schedule per ray), then the PSNR of three training frames.
``--preset-seconds S``: preset gpu_fast trained for the steps its measured speed fits into S
seconds, with the PSNR of three training frames at each quarter of the run.
``--out``: every row also as a JSON line.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import math
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nsff_core.config import SyntheticConfig, TrainConfig  # noqa: E402
from nsff_core.model.data import make_batch, scene_data_from_arrays  # noqa: E402
from nsff_core.model.synthetic import render_scene  # noqa: E402
from nsff_core.workflow.stages.train import _fit, cpu_has_fast_bf16  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def preset(name: str) -> dict:
    """A train preset of config.yaml."""
    return yaml.safe_load((ROOT / "config.yaml").read_text())["train_presets"][name]


MODELS = {
    "small": ("small MLP (4x64, 32 samples)", dict(width=64, depth=4, num_samples=32)),
    "planes": ("cpu_demo planes", {**preset("cpu_demo"), "max_steps": None}),
    "gpu_fast": ("gpu_fast planes", {**preset("gpu_fast"), "max_steps": None}),
    "nsff_pl": ("nsff_pl (8x256, 128 samples)", dict(width=256, depth=8, num_samples=128)),
}


class Clock(pl.Callback):
    """Wall time of the steps after ``warmup`` (device synchronised), peak memory of them."""

    def __init__(self, warmup: int, cuda: bool) -> None:
        self.warmup, self.cuda = warmup, cuda
        self.t0 = self.t1 = None
        self.steps = 0

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self._sync()
            if self.cuda:
                torch.cuda.reset_peak_memory_stats()
            self.t0, self.step0 = time.perf_counter(), trainer.global_step

    def on_train_end(self, trainer, module) -> None:
        self._sync()
        self.t1, self.steps = time.perf_counter(), trainer.global_step - self.step0
        self.peak = torch.cuda.max_memory_allocated() / 2**30 if self.cuda else float("nan")


class Probe(pl.Callback):
    """PSNR of ``frames`` (training views) at the given steps; keeps the module."""

    def __init__(self, data, frames, at_steps, chunk=32768) -> None:
        self.data, self.frames, self.at, self.chunk = data, frames, set(at_steps), chunk
        self.curve: list[tuple[int, float, float]] = []
        self.t_start = None

    def on_train_start(self, trainer, module) -> None:
        self.t_start = time.perf_counter()
        self.eval_s = 0.0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if trainer.global_step in self.at:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            psnr = frame_psnr(module, self.data, self.frames, self.chunk)
            training_s = t0 - self.t_start - self.eval_s  # the evaluations left out
            self.eval_s += time.perf_counter() - t0
            self.curve.append((trainer.global_step, training_s, psnr))


@torch.no_grad()
def frame_psnr(system, data, frames, chunk) -> float:
    """Mean PSNR (dB) of whole training frames rendered by ``system``."""
    was = system.training
    system.eval()
    device = next(system.parameters()).device
    h, w = data.hw
    out = []
    for t in frames:
        b = make_batch(data, t, torch.arange(h * w)).to(device)
        rgb = torch.cat(
            [
                system.render(
                    b.origins[i : i + chunk],
                    b.dirs[i : i + chunk],
                    b.t[i : i + chunk],
                    training=False,
                ).image.rgb.float()
                for i in range(0, h * w, chunk)
            ]
        )
        mse = (rgb.clamp(0, 1) - b.rgb).square().mean()
        out.append(float(-10 * torch.log10(mse)))
    system.train(was)
    return float(np.mean(out))


def run_fit(data, cfg: TrainConfig, steps: int, callbacks, quiet: bool = True) -> None:
    """``steps`` steps of the workflow's training function in a scratch folder; ``quiet``:
    its warnings hidden."""
    with tempfile.TemporaryDirectory() as tmp:
        job = {
            "run_dir": tmp,
            "steps_per_epoch": spe_of(cfg, data),
            "max_steps": steps,
            "resume": None,
            "scene": "synthetic",
        }
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")
            _fit(data, cfg, job, callbacks=callbacks)


def spe_of(cfg: TrainConfig, data) -> int:
    from nsff_core.workflow.stages.train import steps_per_epoch

    return steps_per_epoch(cfg, data)


def make_cfg(model: str, **over) -> TrainConfig:
    base = {k: v for k, v in MODELS[model][1].items() if v is not None}
    base.update(checkpoint_every=10**9, log_every=10**6)
    base.update(over)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in base.items() if k in names})


def emit(row: dict, out) -> None:
    if out is not None:
        out.write(json.dumps(row) + "\n")
        out.flush()


def sync_check(data, models, out) -> None:
    """The host synchronisations of device-resident steps, by source line."""
    print("\n== host synchronisations per step (device-resident, sync debug mode) ==", flush=True)
    for key in models:
        cfg = make_cfg(key, device_resident="device", batch_size=1024, log_every=10**6)
        caught: list[str] = []

        class Debug(pl.Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if trainer.global_step == 2:
                    torch.cuda.set_sync_debug_mode("warn")
                if trainer.global_step == 5:
                    torch.cuda.set_sync_debug_mode(0)

        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            run_fit(data, cfg, 6, [Debug()], quiet=False)
        torch.cuda.set_sync_debug_mode(0)
        for w in got:
            if "synchroniz" in str(w.message):
                caught.append(f"{Path(w.filename).name}:{w.lineno}")
        counts = {k: caught.count(k) for k in sorted(set(caught))}
        print(f"{key}: {len(caught)} synchronising calls in 3 steps: {counts}", flush=True)
        emit({"section": "sync", "model": key, "count": len(caught), "where": counts}, out)


def parse_row(spec: str) -> tuple[str, str, int, str, str]:
    """``model:resident:batch:precision:compile``, e.g. ``nsff_pl:device:4096:bf16:none``."""
    model, resident, batch, prec, comp = spec.split(":")
    return model, resident, int(batch), prec, comp


def throughput(data, args, cuda, has_bf16, out) -> dict:
    print("\n== throughput ==", flush=True)
    head = (
        f"{'model':30s} {'batches':>7s} {'batch':>6s} {'prec':>5s} {'compile':>7s} "
        f"{'s/step':>8s} {'steps/s':>8s} {'rays/s':>9s}"
    )
    print(head + (f" {'peak GiB':>9s}" if cuda else ""), flush=True)
    best = {}
    precisions = [p for p in args.precision if p == "fp32" or has_bf16]
    rows = list(itertools.product(args.models, args.resident, args.batch, precisions, args.compile))
    if args.rows is not None:
        rows = [parse_row(r) for r in args.rows]
    for key, resident, batch, prec, comp in rows:
        if time.perf_counter() > args.deadline:
            print("(deadline: remaining rows skipped)", flush=True)
            break
        cfg = make_cfg(
            key, device_resident=resident, batch_size=batch, precision=prec, compile=comp
        )
        clock = Clock(args.warmup, cuda)
        label = f"{MODELS[key][0]:30s} {resident:>7s} {batch:6d} {prec:>5s} {comp:>7s}"
        row = {
            "section": "throughput",
            "model": key,
            "resident": resident,
            "batch": batch,
            "precision": prec,
            "compile": comp,
        }
        try:
            torch.manual_seed(0)
            run_fit(data, cfg, args.warmup + args.steps, [clock])
        except Exception as err:  # a row that fails (memory, compile) is reported, not fatal
            print(f"{label} failed: {type(err).__name__}: {str(err)[:200]}", flush=True)
            emit({**row, "error": repr(err)[:500]}, out)
        else:
            dt = (clock.t1 - clock.t0) / max(clock.steps, 1)
            line = f"{label} {dt:8.4f} {1 / dt:8.1f} {batch / dt:9.0f}"
            print(line + (f" {clock.peak:9.2f}" if cuda else ""), flush=True)
            emit({**row, "s_per_step": dt, "rays_per_s": batch / dt, "peak_gib": clock.peak}, out)
            if resident == "device" and comp == "none":
                best[(key, batch, prec)] = batch / dt
        if cuda:
            torch.cuda.empty_cache()
    return best


def psnr_per_rays(data, args, out) -> None:
    """gpu_fast at batch 512 and 4096 on the same rays and schedule per ray."""
    print(
        f"\n== PSNR after {args.psnr_rays:,} rays (gpu_fast, training frames 3, 15, 27) ==",
        flush=True,
    )
    frames = [3, data.num_frames // 2, data.num_frames - 3]
    base = make_cfg("gpu_fast")
    for batch, scale in args.psnr_runs:
        steps = math.ceil(args.psnr_rays / batch)
        # the whole schedule in these rays: 10 epochs; both learning rates x scale
        cfg = make_cfg(
            "gpu_fast",
            batch_size=batch,
            epochs=10,
            epoch_rays=args.psnr_rays // 10,
            steps_per_epoch=None,
            lr=base.lr * scale,
            grid_lr=base.grid_lr * scale,
        )
        probe = Probe(data, frames, [steps])
        clock = Clock(1, torch.cuda.is_available())
        t0 = time.perf_counter()
        torch.manual_seed(0)
        run_fit(data, cfg, steps, [clock, probe])
        wall = time.perf_counter() - t0
        psnr = probe.curve[-1][2]
        print(
            f"batch {batch:5d}, lr x {scale:4.2f}: {steps:6d} steps, {psnr:6.2f} dB, {wall:6.1f} s wall "
            f"(training {clock.t1 - clock.t0:6.1f} s)",
            flush=True,
        )
        emit(
            {
                "section": "psnr_rays",
                "batch": batch,
                "lr_scale": scale,
                "rays": args.psnr_rays,
                "steps": steps,
                "psnr": psnr,
                "wall_s": wall,
            },
            out,
        )


def preset_run(data, args, rays_per_s, out) -> None:
    """Preset gpu_fast for the steps its measured speed fits into ``--preset-seconds``."""
    cfg = make_cfg("gpu_fast")
    steps = max(100, int(args.preset_seconds * rays_per_s / cfg.batch_size))
    print(
        f"\n== preset gpu_fast: {steps} steps of {cfg.batch_size} (planned "
        f"{args.preset_seconds:.0f} s at {rays_per_s:,.0f} rays/s) ==",
        flush=True,
    )
    frames = [3, data.num_frames // 2, data.num_frames - 3]
    quarters = [steps // 4, steps // 2, 3 * steps // 4, steps]
    probe = Probe(data, frames, quarters)
    epochs_total = steps / spe_of(cfg, data)
    torch.manual_seed(0)
    run_fit(data, cfg, steps, [probe])
    for step, elapsed, psnr in probe.curve:
        print(
            f"step {step:6d} ({step * cfg.batch_size / 1e6:6.1f} M rays, "
            f"{elapsed:6.1f} s of training): training frames {psnr:6.2f} dB",
            flush=True,
        )
        emit(
            {
                "section": "preset",
                "step": step,
                "seconds": elapsed,
                "psnr": psnr,
                "epochs_total": epochs_total,
            },
            out,
        )


def profile_steps(data, out, model="gpu_fast", batch=4096) -> None:
    """Where a device-resident step's time goes: torch.profiler over 3 steps after 3 of
    warm-up, inside the real training loop."""
    from torch.profiler import ProfilerActivity, profile

    print(f"\n== profile: {model}, batch {batch}, device-resident, bf16 ==", flush=True)
    state = {}

    class Prof(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch_, batch_idx):
            if trainer.global_step == 3:
                torch.cuda.synchronize()
                state["p"] = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
                state["p"].__enter__()
                state["t0"] = time.perf_counter()
            if trainer.global_step == 6:
                torch.cuda.synchronize()
                state["wall"] = (time.perf_counter() - state["t0"]) / 3
                state["p"].__exit__(None, None, None)

    run_fit(
        data,
        make_cfg(model, device_resident="device", batch_size=batch, precision="bf16"),
        7,
        [Prof()],
    )
    events = state["p"].key_averages()
    launches = sum(
        e.count for e in events if e.key.startswith(("cudaLaunchKernel", "cuLaunchKernel"))
    )
    # user annotations ("Optimizer.step#Adam.step") repeat the device time of their kernels
    gpu_us = sum(e.self_device_time_total for e in events if "#" not in e.key) / 3
    print(
        f"wall {state['wall'] * 1e3:.1f} ms/step; GPU busy {gpu_us / 1e3:.1f} ms/step; "
        f"{launches / 3:.0f} kernel launches/step",
        flush=True,
    )
    print(
        events.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=40),
        flush=True,
    )
    emit(
        {
            "section": "profile",
            "model": model,
            "batch": batch,
            "wall_ms": state["wall"] * 1e3,
            "gpu_ms": gpu_us / 1e3,
            "launches": launches / 3,
        },
        out,
    )


def sync_trace(data, model="gpu_fast") -> None:
    """The forward op behind the first host synchronisation of a step's backward: sync debug
    mode "error" under anomaly detection (which prints the forward trace of a failing backward
    op)."""
    from nsff_core.model import losses as L
    from nsff_core.model.data import DeviceFrameSampler
    from nsff_core.model.system import NSFFSystem, loss_terms
    from nsff_core.model.train_views import sampler_config

    print(f"\n== the first synchronising op of a step ({model}) ==", flush=True)
    cfg = make_cfg(model, batch_size=1024)
    batch = DeviceFrameSampler(data, sampler_config(cfg), "cuda").next_batch()
    system = NSFFSystem(cfg, data.meta(), 100).cuda()
    for phase in ("forward", "backward"):
        torch.cuda.synchronize()
        try:
            with torch.autograd.detect_anomaly(check_nan=False):
                torch.cuda.set_sync_debug_mode("error" if phase == "forward" else 0)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    o = system.render(batch.origins, batch.dirs, batch.t, training=True)
                    terms = loss_terms(o, batch, system.P, system.K, 1)
                    loss = L.total_loss(terms, L.weights_at(epoch=0.0))
                torch.cuda.set_sync_debug_mode("error")
                loss.backward()
            print(f"{phase}: no synchronising op", flush=True)
        except RuntimeError:
            torch.cuda.set_sync_debug_mode(0)
            print(f"{phase}: " + traceback.format_exc()[-2500:], flush=True)
        finally:
            torch.cuda.set_sync_debug_mode(0)


def compile_check(data, out, device="cuda", models=("gpu_fast", "nsff_pl")) -> None:
    """One training step of gpu_fast and of a small nsff_pl model, eager against
    ``train.compile`` fields and render: the relative difference of the loss and of the
    gradients (the compiled graphs draw their random numbers as eager does:
    ``fallback_random``)."""
    import torch._inductor.config as inductor_config

    from nsff_core.model import losses as L
    from nsff_core.model.data import DeviceFrameSampler
    from nsff_core.model.system import NSFFSystem, loss_terms
    from nsff_core.model.train_views import sampler_config
    from nsff_core.workflow.stages.train import compile_system

    inductor_config.fallback_random = True
    print("\n== compiled step against eager (bf16 autocast) ==", flush=True)
    for key in models:
        cfg = make_cfg(key, batch_size=1024, noise_std=0.0)
        batch = DeviceFrameSampler(data, sampler_config(cfg), device).next_batch()
        results = {}
        for what in ("none", "fields", "render"):
            torch.manual_seed(0)
            system = NSFFSystem(cfg, data.meta(), 100).to(device)
            compile_system(system, what)
            for _ in range(2):  # the second call runs the compiled code
                torch.manual_seed(1)
                with torch.autocast(device, dtype=torch.bfloat16):
                    o = system.render(batch.origins, batch.dirs, batch.t, training=True)
                    terms = loss_terms(o, batch, system.P, system.K, 1)
                    loss = L.total_loss(terms, L.weights_at(epoch=0.0))
                grads = torch.autograd.grad(loss, list(system.parameters()), allow_unused=True)
            g = torch.cat([x.float().reshape(-1) for x in grads if x is not None])
            results[what] = (float(loss.detach()), g)
        ref_loss, ref_g = results["none"]
        for what in ("fields", "render"):
            loss, g = results[what]
            rel_l = abs(loss - ref_loss) / abs(ref_loss)
            rel_g = float((g - ref_g).norm() / ref_g.norm())
            print(
                f"{key:9s} {what:7s}: loss {loss:.6f} vs {ref_loss:.6f} (rel {rel_l:.2e}), "
                f"gradient rel. difference {rel_g:.2e}",
                flush=True,
            )
            emit(
                {
                    "section": "compile_check",
                    "model": key,
                    "compile": what,
                    "rel_loss": rel_l,
                    "rel_grad": rel_g,
                },
                out,
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", default="160x90", help="WxH of the synthetic scene")
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--models", nargs="*", choices=list(MODELS), default=["small", "planes"])
    ap.add_argument("--batch", nargs="*", type=int, default=[512])
    ap.add_argument("--precision", nargs="*", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    ap.add_argument("--resident", nargs="*", choices=["host", "device"], default=["host"])
    ap.add_argument("--compile", nargs="*", choices=["none", "fields", "render"], default=["none"])
    ap.add_argument(
        "--rows",
        nargs="*",
        help="model:resident:batch:precision:compile rows "
        "instead of the product of the lists above",
    )
    ap.add_argument(
        "--late-rows",
        nargs="*",
        default=[],
        help="more rows, run after the PSNR and preset sections (e.g. compile)",
    )
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--sync-check", action="store_true")
    ap.add_argument(
        "--sync-trace",
        action="store_true",
        help="the forward op behind the first synchronisation of a step (CUDA)",
    )
    ap.add_argument("--profile", action="store_true", help="profile gpu_fast steps (CUDA)")
    ap.add_argument(
        "--psnr-runs",
        nargs="*",
        default=["512:1", "4096:1"],
        help="batch:lr-scale pairs of the --psnr-rays section",
    )
    ap.add_argument("--compile-models", nargs="*", default=["gpu_fast", "nsff_pl"])
    ap.add_argument(
        "--compile-check",
        action="store_true",
        help="a compiled training step against the eager one (CUDA)",
    )
    ap.add_argument("--psnr-rays", type=int, default=0)
    ap.add_argument("--preset-seconds", type=float, default=0.0)
    ap.add_argument(
        "--budget-seconds",
        type=float,
        default=1e9,
        help="skip the remaining throughput rows after this long",
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    args.deadline = time.perf_counter() + args.budget_seconds
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here")
    if not cuda:
        import os

        os.environ["CUDA_VISIBLE_DEVICES"] = ""
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
    if cuda:
        name = torch.cuda.get_device_name()
        has_bf16 = torch.cuda.is_bf16_supported()
    else:
        name = f"cpu, {torch.get_num_threads()} threads"
        has_bf16 = cpu_has_fast_bf16()
    print(
        f"device: {name}; torch {torch.__version__}; {w}x{h}, {args.frames} frames; "
        f"bf16 = autocast (fast bf16 here: {has_bf16})",
        flush=True,
    )
    out = open(args.out, "a") if args.out else None
    emit(
        {
            "section": "device",
            "name": name,
            "torch": torch.__version__,
            "size": args.size,
            "frames": args.frames,
        },
        out,
    )
    args.psnr_runs = [(int(b), float(x)) for b, x in (r.split(":") for r in args.psnr_runs)]
    sections = []
    if args.sync_trace and cuda:
        sections.append(lambda: sync_trace(data))
    if args.profile and cuda:
        sections.append(lambda: profile_steps(data, out))
    if args.sync_check and cuda:
        sections.append(lambda: sync_check(data, args.models, out))
    best: dict = {}
    sections.append(lambda: best.update(throughput(data, args, cuda, has_bf16, out)))
    if args.psnr_rays:
        sections.append(lambda: psnr_per_rays(data, args, out))
    if args.preset_seconds:

        def _preset():
            batch = make_cfg("gpu_fast").batch_size
            speeds = [v for (m, b, _), v in best.items() if m == "gpu_fast" and b == batch]
            speeds = speeds or [v for (m, _, _), v in best.items() if m == "gpu_fast"]
            left = args.deadline - time.perf_counter() - 20
            args.preset_seconds = min(args.preset_seconds, left)
            if args.preset_seconds < 20:
                print("(deadline: no time left for the preset run)", flush=True)
                return
            preset_run(data, args, max(speeds) if speeds else 1e5, out)

        sections.append(_preset)
    if args.late_rows:

        def _late():
            args.rows = args.late_rows
            throughput(data, args, cuda, has_bf16, out)

        sections.append(_late)
    if args.compile_check and cuda:
        sections.append(lambda: compile_check(data, out, models=args.compile_models))
    for section in sections:
        try:
            section()
        except Exception:  # one broken section must not cost the others (device time)
            traceback.print_exc()
            sys.stdout.flush()


if __name__ == "__main__":
    main()

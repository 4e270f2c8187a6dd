"""Training entry point of one scene (rule ``train``): data, Lightning Trainer, checkpoints.

Outputs in ``out_dir``: ``last.ckpt``, ``config.json`` (the settings and scene facts) and
``metrics.csv`` (Lightning's CSV log: every loss term and PSNR per step). An interrupted run
resumes from its last checkpoint (see :func:`train_scene`).

``train.gpus: N > 1`` trains the scene with DDP in N worker processes that :func:`train_scene`
starts itself (``python -c``, never a re-run of ``sys.argv``, which is a Snakemake script or
pytest): each worker gets the environment of an externally launched job (``MASTER_ADDR``,
``MASTER_PORT``, ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), so Lightning creates no processes.
The parent decides what to resume and writes ``config.json`` before the workers start, and moves
the files into ``out_dir`` after they all succeeded; inside the run only rank 0 writes (Lightning's
checkpoints and CSV log). Backend nccl on CUDA, gloo on the CPU (N CPU processes, for tests).

Divergence: :class:`DivergenceGuard` checks every step, before the optimizer step, that every
loss term and every gradient is finite, and stops the run otherwise (:class:`Diverged`), so the
weights never take a non-finite update; a checkpoint is never written with non-finite values
(:mod:`nsff_core.model.checkpoint`). ``train.on_divergence: retry`` resumes once from the last good
checkpoint at half the learning rates; otherwise, or when that diverges too, the run stops with
a :class:`~nsff_core.errors.StageError` naming the step and the term. Under DDP every rank sees
the same loss means and the same all-reduced gradients, so all ranks stop at the same step.

With batches drawn on the host (``train.device_resident: host``, the CPU default) the check
reads one flag per step on the host, and the CSV logger writes every step. With batches drawn
on the device (the default with CUDA) nothing is read per step: fused Adam skips a non-finite
step on the device, and the guard and the CSV logger read it every ``log_every`` steps
(:class:`DivergenceGuard`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from nsff_core.config import (
    FORWARD_ZOOM,
    TrainConfig,
    from_dict,
    resolve_disparity_movers,
    resolve_static_last_delta,
    to_dict,
)
from nsff_core.errors import ConfigError, CorruptFileError, StageError
from nsff_core.model.checkpoint import (
    LAST,
    PREVIOUS,
    NonFiniteStateError,
    VerifiedCheckpointIO,
    load_checkpoint,
)
from nsff_core.model.data import DeviceFrameSampler, FrameSampler, SamplerConfig, SceneData
from nsff_core.model.system import NSFFSystem
from nsff_core.model.train_views import sampler_config
from nsff_core.progress import EVERY_S, eta_seconds, format_duration
from nsff_core.workflow.layout import SceneLayout

from .scene import load_scene

log = logging.getLogger(__name__)


class RayBatchStream(torch.utils.data.IterableDataset):
    """An endless stream of training batches (one frame per batch, see :class:`FrameSampler`).

    ``device`` None: drawn on the host (:class:`FrameSampler`, the batch moved to the model's
    device by Lightning); else drawn there from the scene's tensors copied there once
    (:class:`DeviceFrameSampler`, ``train.device_resident``). Under DDP every process has its
    own stream, seeded ``train.seed + rank`` (:func:`~nsff_core.model.train_views.sampler_config`).
    """

    def __init__(
        self, data: SceneData, sampling: SamplerConfig, device: torch.device | None = None
    ) -> None:
        super().__init__()
        self.data = data
        if device is None:
            self.sampler = FrameSampler.from_config(
                sampling, data.num_frames, data.hw, data.dynamic
            )
        else:
            self.sampler = DeviceFrameSampler(data, sampling, device)

    def __iter__(self):
        while True:
            yield self.sampler.next_batch(self.data)


#: nsff_pl's rays per step: an epoch is H * W * N / 1000 steps of this many rays
NSFF_PL_BATCH = 512


def steps_per_epoch(cfg: TrainConfig, data: SceneData, world_size: int = 1) -> int:
    """Steps per epoch of each of ``world_size`` processes.

    An epoch is a number of rays: ``cfg.epoch_rays``, or nsff_pl's H * W * N / 1000 steps of
    512 rays; one process takes that / ``batch_size`` steps (at least 1), so a run at batch
    4096 sees the loss schedule and learning rate of one at 512 after the same rays. An
    explicit ``cfg.steps_per_epoch`` counts steps instead. N processes each draw a batch per
    step, so they take ceil(that / N) steps per epoch.

    Example: 512x288, 30 frames: 4,423 steps at batch 512, 553 at batch 4096.
    """
    if cfg.steps_per_epoch:
        single = cfg.steps_per_epoch
    else:
        h, w = data.hw
        rays = cfg.epoch_rays or NSFF_PL_BATCH * max(1, h * w * data.num_frames // 1000)
        single = max(1, round(rays / cfg.batch_size))
    return max(1, math.ceil(single / world_size))


def schedule_warning(cfg: TrainConfig, spe: int, total: int, world_size: int = 1) -> str | None:
    """A warning when the step budget ends before the depth and flow priors' first decay.

    The loss schedule counts in epochs (``lambda_geo`` falls 10x every
    ``lambda_geo_decay_every`` epochs, docs/method.md "Schedule"). A budget of ``total`` steps
    shorter than one decay period keeps the priors at full weight to the end, and their errors
    show as blur (suite_walker, 600 steps: training views 23.2 dB with the depth prior at full
    weight, 27.2 dB without it). Example: 1,100 steps at 1,382 steps per epoch end in epoch
    0.8 of a 10-epoch period; ``steps_per_epoch: 22`` (1,100 / 50 epochs) runs the whole
    schedule within the budget. ``spe`` and ``total`` count the steps of each of
    ``world_size`` processes (the suggested setting counts before the split, as the config does).
    """
    period = cfg.lambda_geo_decay_every * spe
    if cfg.lambda_geo_init <= 0 or total > period:
        return None
    fit = max(1, round(total * world_size / cfg.epochs))
    return (
        f"train: the {total} steps end in epoch {total / spe:.2f}, before the depth and flow "
        f"priors' first decay (every {cfg.lambda_geo_decay_every:g} epochs of {spe} steps): "
        f"they keep their full weight {cfg.lambda_geo_init:g} to the end and hold the result "
        f"to their errors (blur). To run the whole loss schedule within the budget, set "
        f"train.steps_per_epoch to about {fit} (the steps / train.epochs {cfg.epochs})"
    )


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX bf16 tiles (Linux /proc/cpuinfo), where bf16 matmuls are ~3x fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags


def device_settings(precision: str = "auto", devices: int = 1) -> dict[str, Any]:
    """Accelerator, device count and precision for Lightning.

    ``precision`` auto: bf16 autocast on GPUs that support it (and TF32 matmuls) and on CPUs
    with AMX; fp32 elsewhere. fp32 / bf16 force one. No GPU: a warning, since CPU training is
    slow (``devices`` > 1 then means that many CPU processes).
    """
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"train.precision must be auto, fp32 or bf16, got {precision!r}")
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return {
            "accelerator": "gpu",
            "devices": devices,
            "precision": "bf16-mixed" if uses_bf16(precision) else "32",
        }
    if devices > 1:
        warnings.warn(
            f"no GPU found: train.gpus={devices} trains in {devices} CPU processes (DDP, gloo;"
            " slow, meant for tests)",
            stacklevel=2,
        )
    else:
        warnings.warn("no GPU found: training runs on the CPU (slow)", stacklevel=2)
    bf16 = uses_bf16(precision)
    return {"accelerator": "cpu", "devices": devices, "precision": "bf16-mixed" if bf16 else "32"}


def uses_bf16(precision: str) -> bool:
    """Whether ``train.precision`` trains with bf16 autocast on this machine (see
    :func:`device_settings`)."""
    if precision != "auto":
        return precision == "bf16"
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_fast_bf16()


class ProgressLog(pl.Callback):
    """Logs a line every ``every`` steps, and between them at least every ``every_s`` seconds
    (a slow model on a CPU): step/total, loss, PSNR, training rays/s since the last line
    (``batch_size``: the rays of one step over all processes), the elapsed time and an ETA.
    The ETA counts this run's steps only (a resumed run starts at its checkpoint's step)."""

    def __init__(
        self,
        every: int,
        batch_size: int,
        total: int,
        every_s: float = EVERY_S,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.every, self.batch_size, self.total = every, batch_size, total
        self.every_s, self.clock = every_s, clock
        self.t0 = self.last = clock()
        self.start = self.step0 = 0

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.t0 = self.last = self.clock()
        self.start = self.step0 = trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        now = self.clock()
        on_step = step % self.every == 0 or step == self.total
        if not on_step and now - self.last < self.every_s:
            return
        rays = (step - self.step0) * self.batch_size / max(now - self.last, 1e-9)
        eta = eta_seconds(step - self.start, self.total - self.start, now - self.t0)
        m = trainer.callback_metrics
        log.info(
            "train: step %d/%d, loss %.4f, PSNR %.2f dB, %.0f rays/s, %s elapsed, ETA %s",
            step,
            self.total,
            float(m.get("loss/total", float("nan"))),
            float(m.get("train/psnr", float("nan"))),
            rays,
            format_duration(now - self.t0),
            format_duration(eta),
        )
        self.last, self.step0 = now, step


class Diverged(RuntimeError):
    """Training produced a non-finite loss term, gradient or weight.

    Args:
        step: the training step (``global_step``) whose update was refused.
        what: the first non-finite quantity, e.g. ``loss term 'color' is nan`` or
            ``the gradient of static_field.density.0.weight is not finite``.
    """

    def __init__(self, step: int, what: str) -> None:
        self.step, self.what = int(step), what
        super().__init__(f"training diverged at step {self.step}: {what}")


def _first_nonfinite(losses: dict[str, torch.Tensor], params: list[tuple[str, Any]]) -> str:
    """The first non-finite loss term (in ``losses`` order), else the first parameter with a
    non-finite gradient, in words (only called once the step is known to be non-finite)."""
    for name, value in losses.items():
        if not bool(torch.isfinite(value).all()):
            return f"loss term '{name}' is {float(value)}"
    for name, grad in params:
        bad = int((~torch.isfinite(grad)).sum())
        if bad:
            return f"the gradient of {name} is not finite ({bad} of {grad.numel()} values)"
    return "a loss term or gradient is not finite"


def _largest_gradient(grads: list[torch.Tensor]) -> torch.Tensor:
    """The largest |g| over ``grads``: finite exactly when every value is (NaN propagates)."""
    return torch.nn.utils.get_total_norm(grads, norm_type=math.inf)


class DivergenceGuard(pl.Callback):
    """Stops training at a step with a non-finite loss term or gradient, without the optimizer
    applying it (:class:`Diverged`), so the weights and every later checkpoint stay finite.

    Reads ``pl_module.step_losses`` (every loss term of the step, set by
    :meth:`~nsff_core.model.system.NSFFSystem.training_step`) and the gradients after backward
    (under DDP after their all-reduce).

    ``every`` 1: one host read of one flag per step, and the run stops before the optimizer
    step. ``every`` k > 1 (``train.device_resident``, no host synchronisation per step): the flag
    stays on the device and is handed to the optimizer as ``found_inf`` (the fused Adam of
    :meth:`~nsff_core.model.system.NSFFSystem.configure_optimizers` then skips the update on
    the device); the first bad step and its terms are remembered there, and read on the host
    every k steps, at every checkpoint step and at the end, where the run stops naming that
    step. The names are looked up only when a step was bad.
    """

    def __init__(self, every: int = 1, checkpoint_every: int = 0) -> None:
        self.every = max(1, int(every))
        self.checkpoint_every = int(checkpoint_every)
        #: deferred mode: the first bad step (-1: none) and, per set of term names, which
        #: of them (and the gradient, last) were not finite at that step; on the device
        self.first_bad: torch.Tensor | None = None
        self.bad_terms: dict[tuple[str, ...], torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        losses = pl_module.step_losses
        params = [(n, p.grad) for n, p in pl_module.named_parameters() if p.grad is not None]
        checks = [v.detach().float().reshape(()) for v in losses.values()]
        grads = [g for _, g in params]
        if grads:
            if self.every == 1:
                # the sum of every gradient value: NaN and inf propagate, so it is finite when
                # every value is, and a CPU reads the values in a tenth of the time of the
                # largest |g| (which was 8 % of a cpu_demo step); finite values that overflow
                # the sum are told apart below, on that step only
                total = torch.stack([g.detach().sum() for g in grads]).sum()
            else:
                # the largest |g|: finite exactly when every value is (one read on a GPU)
                total = _largest_gradient(grads)
            checks.append(
                total.float().reshape(()).to(checks[0].device if checks else total.device)
            )
        if not checks:
            return
        finite = torch.isfinite(torch.stack(checks))
        if self.every == 1:
            if bool(finite.all()):
                return
            # the losses finite and every gradient value too: only their sum overflowed
            if grads and bool(finite[:-1].all()) and bool(torch.isfinite(_largest_gradient(grads))):
                return
            raise Diverged(trainer.global_step, _first_nonfinite(losses, params))
        bad = ~finite.all()
        getattr(optimizer, "optimizer", optimizer).found_inf = bad.float()
        if self.first_bad is None:
            self.first_bad = torch.full((), -1, dtype=torch.long, device=bad.device)
        new = bad & (self.first_bad < 0)
        self.first_bad = torch.where(
            new, torch.full_like(self.first_bad, trainer.global_step), self.first_bad
        )
        key = tuple(losses) + (("<gradient>",) if params else ())
        old = self.bad_terms.get(key, torch.zeros_like(finite))
        self.bad_terms[key] = torch.where(new, ~finite, old)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        due = step % self.every == 0 or step == trainer.max_steps
        if self.checkpoint_every and step % self.checkpoint_every == 0:
            due = True
        if self.every > 1 and due:
            self.check()

    def on_train_end(self, trainer, pl_module) -> None:
        self.check()

    def check(self) -> None:
        """Deferred mode: raise :class:`Diverged` for the first bad step seen (a host read)."""
        if self.first_bad is None:
            return
        step = int(self.first_bad)
        if step < 0:
            return
        what = "a loss term or gradient is not finite"
        for names, flags in self.bad_terms.items():
            hits = [n for n, f in zip(names, flags.tolist(), strict=True) if f]
            if hits:
                name = hits[0]
                what = (
                    "a gradient is not finite"
                    if name == "<gradient>"
                    else f"loss term '{name}' is not finite"
                )
                break
        raise Diverged(step, f"{what} (the update was skipped)")


#: settings that change how long training runs, not what it trains: a checkpoint written under
#: other values of these is still resumed
BUDGET_KEYS = ("epochs", "max_steps", "max_time_minutes", "checkpoint_every", "log_every")
#: settings that change neither what a run trains nor how long: also ignored on resume (a run
#: stopped by divergence resumes when only on_divergence changed; a run moved from the CPU to a
#: GPU resumes with its batches drawn there, its ray stream started afresh with a warning)
HANDLING_KEYS = ("on_divergence", "device_resident", "compile")
#: facts that record what happened in a run (divergence retries), not its settings
RUN_RECORD_KEYS = ("lr_scale", "divergence")


def _same_settings(old: dict[str, Any], facts: dict[str, Any]) -> bool:
    """Whether ``old`` (a run's config.json) and ``facts`` describe the same training."""
    ignored_train = BUDGET_KEYS + HANDLING_KEYS
    ignored = ("train", "max_steps", *RUN_RECORD_KEYS)

    def key(f: dict[str, Any]) -> dict[str, Any]:
        train = {k: v for k, v in f["train"].items() if k not in ignored_train}
        return {**{k: v for k, v in f.items() if k not in ignored}, "train": train}

    return key(old) == key(facts)


def _good_checkpoint(
    candidates: list[Path], set_aside: bool, before_step: int | None = None
) -> tuple[Path, int] | None:
    """The first of ``candidates`` that loads and is finite (:func:`load_checkpoint`), and
    with ``before_step`` was written before that step; with its ``global_step``.

    A corrupt one is logged and, with ``set_aside``, renamed to ``<name>.corrupt`` (kept for
    a look, never read again).
    """
    for ckpt in candidates:
        if not ckpt.is_file():
            continue
        try:
            step = int(load_checkpoint(ckpt)["global_step"])
        except CorruptFileError as err:
            if set_aside:
                aside = ckpt.with_name(ckpt.name + ".corrupt")
                os.replace(ckpt, aside)
                log.warning("train: %s (set aside as %s)", err, aside.name)
            else:
                log.warning("train: %s (not resumed)", err)
            continue
        if before_step is None or step < before_step:
            return ckpt, step
    return None


def _resumable(run_dir: Path, facts: dict[str, Any]) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint in ``run_dir`` and its run's config.json, if it was written for the same
    scene and settings and it loads; None otherwise.

    The number of processes (``train.gpus``, ``world_size``) is a setting: another value
    changes the epoch length and the ray streams, so the run starts from scratch. In a
    ``running/`` folder a corrupt ``last.ckpt`` is set aside (``last.ckpt.corrupt``, with a
    warning) and the run resumes from ``previous.ckpt``, the checkpoint it replaced, if that one
    is good; a finished run (``out_dir``) has ``last.ckpt`` only.
    """
    meta = run_dir / "config.json"
    candidates = [run_dir / LAST] + ([run_dir / PREVIOUS] if run_dir.name == "running" else [])
    if not (meta.exists() and any(c.exists() for c in candidates)):
        return None
    old = json.loads(meta.read_text())
    # written before train.gpus existed: one process
    old.setdefault("world_size", 1)
    old["train"].setdefault("gpus", 1)
    ckpt = candidates[0] if candidates[0].exists() else candidates[-1]
    if not _same_settings(old, facts):
        if old["world_size"] != facts["world_size"]:
            log.warning(
                "train: %s was written by %d process(es), this run has %d (train.gpus);"
                " starting from scratch",
                ckpt,
                old["world_size"],
                facts["world_size"],
            )
        else:
            log.warning("train: %s was written with other settings; starting from scratch", ckpt)
        return None
    good = _good_checkpoint(candidates, set_aside=run_dir.name == "running")
    if good is None:
        log.warning("train: no good checkpoint left in %s; starting from scratch", run_dir)
        return None
    if good[0] != candidates[0]:
        log.warning("train: resuming from the checkpoint before it, %s", good[0])
    return good[0], old


def scene_depth_backend(scene_dir: Path) -> str | None:
    """The depth backend that made the scene's prior, from the record of rule weights
    (``weights.json``); None where there is none (a scene prepared outside the workflow)."""
    path = Path(SceneLayout(str(scene_dir)).weights)
    try:
        return json.loads(path.read_text())["backends"]["depth"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _resolve_auto(cfg: TrainConfig, scene_dir: Path) -> TrainConfig:
    """``cfg`` with ``disparity_movers: auto`` decided by the scene's depth backend."""
    if cfg.disparity_movers != "auto":
        return cfg
    from nsff_core.priors import backends

    backend = scene_depth_backend(scene_dir)
    weights_free = None if backend is None else backend in backends.names("depth", False)
    movers = resolve_disparity_movers("auto", weights_free)
    log.info(
        "train: the depth prior's term %s the motion masks (train.disparity_movers: auto, "
        "depth backend %s)",
        "covers" if movers else "leaves out",
        backend or "not recorded",
    )
    return dataclasses.replace(cfg, disparity_movers=movers)


def _resolve_backdrop(cfg: TrainConfig, zoom: float | None) -> TrainConfig:
    """``cfg`` with ``static_last_delta: auto`` decided by the camera path's forward zoom."""
    if cfg.static_last_delta != "auto":
        return cfg
    delta = resolve_static_last_delta("auto", zoom)
    log.info(
        "train: static_last_delta auto -> %g: the far content's image size changes by %s over "
        "the clip (from %.0f %% on, the camera counts as moving towards the scene)",
        delta,
        "an unknown fraction" if zoom is None else f"{100 * zoom:.1f} %",
        100 * FORWARD_ZOOM,
    )
    return dataclasses.replace(cfg, static_last_delta=delta)


def train_scene(
    scene_dir: str | Path,
    out_dir: str | Path,
    cfg: TrainConfig,
    scene: str | None = None,
    holdout_every: int = 0,
) -> Path:
    """Train NSFF on the preprocessed scene in ``scene_dir``; returns ``out_dir/last.ckpt``.

    While training, checkpoints, ``config.json`` and ``metrics.csv`` live in
    ``out_dir/running/``, which Snakemake does not know about and so does not delete when a job
    dies: a rerun resumes from ``running/last.ckpt`` when it was written for the same scene and
    settings (the training budget may differ); a corrupt one is set aside and the run resumes
    from ``running/previous.ckpt`` or from scratch. On success the three files move to
    ``out_dir``.

    A divergence (:class:`Diverged`) stops the run with a :class:`StageError`; with
    ``cfg.on_divergence == "retry"`` the run first resumes once from its last good checkpoint
    (from scratch if it has none) with both learning rates halved. ``config.json`` records
    each divergence (``divergence``: step, cause, action) and the factor on the learning rates
    (``lr_scale``); a rerun that resumes the run keeps that factor, and a run that has retried
    once does not retry again.

    ``cfg.gpus`` > 1: the training runs in that many DDP worker processes (see the module
    docstring); this process prepares the run, waits for them and then finishes the run.

    ``holdout_every`` (config ``eval.holdout_every``) k >= 2: frames k-1, 2k-1, ... are left
    out (:mod:`nsff_core.holdout`); the checkpoint keeps the source frame of each training
    frame (``frame_ids``).
    """
    out_dir = Path(out_dir)
    run_dir = out_dir / "running"
    cfg = _resolve_auto(cfg, Path(scene_dir))
    world = cfg.gpus
    if world < 1:
        raise ConfigError(f"train.gpus must be at least 1, got {world}")
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = load_scene(scene_dir, scene=scene, holdout_every=holdout_every)
    cfg = _resolve_backdrop(cfg, data.forward_zoom)
    spe = steps_per_epoch(cfg, data, world)
    total = cfg.max_steps or cfg.epochs * spe
    facts: dict[str, Any] = {
        "train": to_dict(cfg),
        "num_frames": data.num_frames,
        "hw": list(data.hw),
        "steps_per_epoch": spe,
        "max_steps": total,
        "world_size": world,
        "near_depth": data.near_depth,
        "normalization": data.normalization.to_dict(),
    }
    if holdout_every:
        facts["holdout_every"] = int(holdout_every)
        facts["frame_ids"] = data.frame_ids.tolist()
    found = _resumable(run_dir, facts) or _resumable(out_dir, facts)
    resume, old = found if found is not None else (None, {})
    if resume is None or resume.parent != run_dir:
        # of other settings: never to be resumed by mistake
        _remove_checkpoints(run_dir, "of an earlier run (other settings)")
    # what happened to the run so far: a resumed run keeps its learning-rate factor and the
    # record of its retry
    facts["lr_scale"] = float(old.get("lr_scale", 1.0))
    facts["divergence"] = list(old.get("divergence", []))
    metrics = run_dir / "metrics.csv"
    if resume is not None and resume.parent == out_dir and (out_dir / "metrics.csv").exists():
        shutil.copy(out_dir / "metrics.csv", metrics)
    history = pd.read_csv(metrics) if resume is not None and metrics.exists() else None
    (run_dir / "config.json").write_text(json.dumps(facts, indent=2))

    if resume is not None:
        log.info("train: resuming from %s", resume)
    if facts["lr_scale"] != 1.0:
        log.info("train: learning rates x %g (after a divergence retry)", facts["lr_scale"])
    log.info(
        "train: %d frames %dx%d, %d steps (%d per epoch), %d rays per step%s",
        data.num_frames,
        data.hw[1],
        data.hw[0],
        total,
        spe,
        cfg.batch_size * world,
        f" ({world} processes x {cfg.batch_size})" if world > 1 else "",
    )
    note = schedule_warning(cfg, spe, total, world)
    if note:
        log.warning(note)
    job = {
        "scene_dir": str(scene_dir),
        "scene": scene,
        "run_dir": str(run_dir),
        "cfg": to_dict(cfg),
        "steps_per_epoch": spe,
        "max_steps": total,
        "resume": str(resume) if resume is not None else None,
        "lr_scale": facts["lr_scale"],
        "holdout_every": int(holdout_every),
    }
    if world > 1:
        _check_devices(world)
        del data  # the workers load their own copy
    while True:
        try:
            if world == 1:
                _fit(data, cfg, job)
            else:
                _launch_workers(job, world)
            break
        except Diverged as err:
            history = _merge_metrics(history, metrics)
            job = _after_divergence(err, cfg, job, facts, scene)
            if job["resume"] is None:
                history = None  # from scratch: the steps before do not count
            (run_dir / "config.json").write_text(json.dumps(facts, indent=2))

    if history is not None:
        # Lightning's CSV logger starts a new file on resume (and leaves none when the run was
        # already complete): keep the earlier steps in it
        _merge_metrics(history, metrics).to_csv(metrics, index=False)
    # the checkpoint is checked (loads, finite) before it becomes the output; copies first, the
    # checkpoint moved last (it marks the run done): a kill in between leaves running/
    # complete, so the rerun resumes from it instead of starting again
    load_checkpoint(run_dir / LAST)
    for name in ("config.json", "metrics.csv"):
        shutil.copy2(run_dir / name, out_dir / name)
    os.replace(run_dir / LAST, out_dir / LAST)
    shutil.rmtree(run_dir)
    return out_dir / LAST


def _remove_checkpoints(run_dir: Path, why: str) -> None:
    """Delete the checkpoints in ``run_dir`` (a run that starts afresh there): a stale one must
    never be resumed, nor be the "last good checkpoint" of a divergence retry."""
    for name in (LAST, PREVIOUS):
        if (run_dir / name).is_file():
            log.info("train: removing %s %s", run_dir / name, why)
            (run_dir / name).unlink()


def _merge_metrics(history: pd.DataFrame | None, metrics: Path) -> pd.DataFrame | None:
    """The steps of ``history`` before the first step in ``metrics`` (Lightning's CSV log of the
    latest fit, which starts a new file), then that file's rows."""
    if not metrics.exists():
        return history
    new = pd.read_csv(metrics)
    if history is None or new.empty:
        return new if history is None else history
    old = history[history["step"] < new["step"].min()]
    return pd.concat([old, new], ignore_index=True)


def _after_divergence(
    err: Diverged, cfg: TrainConfig, job: dict[str, Any], facts: dict[str, Any], scene: str | None
) -> dict[str, Any]:
    """Record a divergence in ``facts`` and return the job of the retry, or raise the
    :class:`StageError` (stop, or the run already retried once)."""
    run_dir = Path(job["run_dir"])
    records = facts["divergence"]
    retried = [r for r in records if r["action"] == "retry"]
    record = {"step": err.step, "cause": err.what, "lr_scale": facts["lr_scale"]}
    if cfg.on_divergence == "retry" and not retried:
        # the newest checkpoint written before the diverged step (the state of that step
        # itself produced the non-finite values): this run's, else the one it resumed from
        good = _good_checkpoint([run_dir / LAST, run_dir / PREVIOUS], True, err.step)
        if good is None and job["resume"] is not None:
            good = _good_checkpoint([Path(job["resume"])], False, err.step)
        start, from_step = good if good is not None else (None, 0)
        # the checkpoints of the diverged steps go: a kill during the retry must not make the
        # rerun resume from one of them
        if start is not None and start.parent == run_dir:
            if start.name != LAST:
                os.replace(start, run_dir / LAST)
                start = run_dir / LAST
        else:
            _remove_checkpoints(run_dir, f"(written at or after the diverged step {err.step})")
        facts["lr_scale"] = facts["lr_scale"] / 2
        records.append({**record, "action": "retry", "resumed_from_step": from_step})
        log.warning(
            "train: %s; retrying once (train.on_divergence: retry) from %s at half the"
            " learning rates (lr %g, grid_lr %g)",
            err,
            f"{start} (step {from_step})" if start is not None else "scratch",
            cfg.lr * facts["lr_scale"],
            cfg.grid_lr * facts["lr_scale"],
        )
        return {
            **job,
            "resume": str(start) if start is not None else None,
            "lr_scale": facts["lr_scale"],
        }
    records.append({**record, "action": "stop"})
    (run_dir / "config.json").write_text(json.dumps(facts, indent=2))
    cause = str(err)
    if retried:
        r = retried[-1]
        cause += (
            f"; it had diverged before at step {r['step']} ({r['cause']}) and retried once from"
            f" step {r['resumed_from_step']} at half the learning rates (train.on_divergence:"
            " retry)"
        )
    lower = f"lower train.lr (now {cfg.lr:g})"
    if cfg.field == "planes":
        lower += f" and train.grid_lr (now {cfg.grid_lr:g})"
    hints = [lower + ", e.g. 10x"]
    if uses_bf16(cfg.precision):
        hints.append(f"train in full precision (train.precision: fp32, now {cfg.precision})")
    if cfg.on_divergence != "retry":
        hints.append(
            "or set train.on_divergence: retry to resume once from the last good checkpoint"
            " at half the learning rates"
        )
    last = run_dir / LAST if (run_dir / LAST).is_file() else None
    hint = (
        "; ".join(hints)
        + ". No checkpoint with NaN or inf was written"
        + (
            f"; the last good one, {last}, is kept (a rerun with the same settings resumes from"
            " it, other settings start afresh)"
            if last is not None
            else ""
        )
    )
    raise StageError(scene, "train", cause, hint) from None


def resident_device(cfg: TrainConfig, rank: int = 0) -> torch.device | None:
    """Where the training batches are drawn under ``train.device_resident`` (None: on the
    host). auto: on the GPU when CUDA is there, else on the host; device: on the training
    device (the CPU without CUDA, what the tests use); host: on the host."""
    mode = cfg.device_resident
    if mode not in ("auto", "device", "host"):
        raise ConfigError(f"train.device_resident must be auto, device or host, got {mode!r}")
    cuda = torch.cuda.is_available()
    if mode == "host" or (mode == "auto" and not cuda):
        return None
    if not cuda:
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))


def compile_system(system: NSFFSystem, what: str, backend: str = "inductor") -> None:
    """``train.compile``: none; fields (each field module compiled in place, its parameters and
    checkpoint keys unchanged); render (the whole training render, fields included, as one
    compiled function). Eager stays the switch (``none``) and the fallback: a graph that fails
    to compile runs eagerly (``suppress_errors``; seen for ``render`` with torch 2.11 on an
    H200, where Triton failed on a fused kernel holding the compositing product)."""
    if what == "none":
        return
    # a graph the compiler cannot build runs eagerly (with a warning) instead of failing the run
    torch._dynamo.config.suppress_errors = True
    if what == "fields":
        system.static_field.compile(backend=backend, dynamic=False)
        system.dynamic_field.compile(backend=backend, dynamic=False)
    elif what == "render":
        system.render_rays = torch.compile(system.render_rays, backend=backend, dynamic=False)
    else:
        raise ConfigError(f"train.compile must be none, fields or render, got {what!r}")


#: Lightning warnings that are false or not actionable for a user of this stage: the run folder
#: holds config.json before the CSV log starts, and a resumed run appends to metrics.csv (the
#: warning says earlier log files will be deleted; they are not); the advice to start training
#: under ``srun`` wherever SLURM is installed (the workflow's SLURM profile submits the rule as a
#: job, and this stage starts its own DDP workers); Lightning's own use of a deprecated torch API.
QUIET_WARNINGS = (
    r"Experiment logs directory .* exists and is not empty",
    r"The `srun` command is available on your system but is not used",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # a resumed run continues its ray stream and its render's random state from the checkpoint
    # (NSFFSystem.on_save_checkpoint): it trains as the uninterrupted run would
    # (tests/test_checkpoint.py), which is what this warning doubts
    r"You're resuming from a checkpoint that ended before the epoch ended",
)
#: Lightning's info lines (logger ``pytorch_lightning.utilities.rank_zero``) not shown: an
#: advertisement for a cloud service, printed by every Trainer
QUIET_INFO = (r"Tip: For seamless cloud logging",)


class _DropMessages(logging.Filter):
    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.search(message) for p in self.patterns)


@contextlib.contextmanager
def _quiet_lightning():
    """Hide :data:`QUIET_WARNINGS` and :data:`QUIET_INFO` inside the block."""
    info = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    drop = _DropMessages(QUIET_INFO)
    info.addFilter(drop)
    try:
        with warnings.catch_warnings():
            for message in QUIET_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        info.removeFilter(drop)


def _fit(
    data: SceneData,
    cfg: TrainConfig,
    job: dict[str, Any],
    rank: int = 0,
    world: int = 1,
    callbacks: list[pl.Callback] | None = None,
) -> None:
    """Lightning fit in this process, rank ``rank`` of ``world``, then ``last.ckpt`` in
    ``job["run_dir"]``. Under DDP every rank runs this; only rank 0 writes files (Lightning's
    checkpoints and CSV log are rank-zero only).

    Raises:
        Diverged: a non-finite loss term or gradient (:class:`DivergenceGuard`), or weights that
            became non-finite (found when a checkpoint was to be written).
        StageError: a checkpoint could not be written.
    """
    run_dir = Path(job["run_dir"])
    spe, total, resume = job["steps_per_epoch"], job["max_steps"], job["resume"]
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    system = NSFFSystem(cfg, data.meta(keep_frame_ids=bool(job.get("holdout_every"))), spe)
    if rank:
        # its own density noise (DDP starts every rank from rank 0's weights); seed_everything,
        # since Lightning reseeds from it when it sets up DDP
        pl.seed_everything(cfg.seed + rank, workers=True, verbose=False)
    device = resident_device(cfg, rank)
    stream = RayBatchStream(data, sampler_config(cfg, rank), device)
    system.pixel_sampler = stream.sampler
    system.training_frames = data.rgb
    system.lr_scale = float(job.get("lr_scale", 1.0))
    # no host synchronisation per step: fused Adam (the system's optimizer) skips a non-finite
    # step on the device, the guard and the CSV log read the device every log_every steps
    resident = device is not None
    sync_every = cfg.log_every if resident else 1
    compile_system(system, cfg.compile)
    ckpt_cb = ModelCheckpoint(
        dirpath=run_dir,
        filename="step{step}",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=cfg.checkpoint_every,
        save_on_train_epoch_end=False,
        # always last.ckpt (never last-v1.ckpt next to an older file): the name resume reads
        enable_version_counter=False,
    )
    distributed: dict[str, Any] = {}
    if world > 1:
        from pytorch_lightning.plugins.environments import LightningEnvironment
        from pytorch_lightning.strategies import DDPStrategy

        distributed = {
            # the environment of the workers (LOCAL_RANK set): Lightning starts no processes,
            # and ignores any SLURM or torchelastic variables of the job
            "strategy": DDPStrategy(
                cluster_environment=LightningEnvironment(),
                process_group_backend="nccl" if torch.cuda.is_available() else "gloo",
                **_no_buffer_sync(),
            ),
            "use_distributed_sampler": False,  # every rank has its own stream
        }
    with _quiet_lightning():
        trainer = pl.Trainer(
            max_steps=total,
            max_time=timedelta(minutes=cfg.max_time_minutes) if cfg.max_time_minutes else None,
            limit_train_batches=spe,
            max_epochs=-1,
            logger=CSVLogger(save_dir=run_dir, name="", version=""),
            callbacks=[
                DivergenceGuard(sync_every, cfg.checkpoint_every),
                ckpt_cb,
                ProgressLog(cfg.log_every, cfg.batch_size * world, total),
                *(callbacks or []),
            ],
            # verified saves, and weights_only loads for the resume
            plugins=[VerifiedCheckpointIO(job["scene"])],
            enable_progress_bar=False,
            enable_model_summary=False,
            log_every_n_steps=sync_every,
            num_sanity_val_steps=0,
            **device_settings(cfg.precision, world),
            **distributed,
        )
    # its own generator: creating an iterator (every epoch, and once after a resume) draws a
    # seed from it, which must not move the global one that the render's jitter draws from
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=0, generator=torch.Generator().manual_seed(cfg.seed)
    )
    try:
        with _quiet_lightning():
            trainer.fit(system, train_dataloaders=loader, ckpt_path=resume, weights_only=True)
        trainer.save_checkpoint(run_dir / LAST, weights_only=False)  # the full training state
    except NonFiniteStateError as err:
        raise Diverged(
            err.step if err.step is not None else trainer.global_step,
            f"the weights or optimizer state are not finite ({err.names[0]})",
        ) from err


def _no_buffer_sync() -> dict[str, bool]:
    """DDP keyword: no copy of rank 0's buffers at every forward (they are synced once, at the
    start; the system keeps the hard-sampling weights equal itself, and last_rgb is per rank
    until it merges them). ``forward_sync_buffers`` since torch 2.14, ``broadcast_buffers``
    before."""
    from torch.nn.parallel import DistributedDataParallel

    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


# --- DDP worker processes ------------------------------------------------------------------

#: variables of other launchers that must not reach the workers
_LAUNCHER_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "NODE_RANK",
    "GROUP_RANK",
    "LOCAL_WORLD_SIZE",
    "TORCHELASTIC_RUN_ID",
)
_WORKER_CMD = (
    "import sys; from nsff_core.workflow.stages.train import _ddp_worker; _ddp_worker(sys.argv[1])"
)


def _check_devices(world: int) -> None:
    """Fail before starting workers when CUDA shows fewer devices than ``train.gpus``."""
    if torch.cuda.is_available() and torch.cuda.device_count() < world:
        raise ConfigError(
            f"train.gpus is {world} but {torch.cuda.device_count()} CUDA device(s) are visible"
            f" (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); lower"
            " train.gpus or give the job more GPUs"
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log_files() -> list[str]:
    """The files the root logger writes to, switched to append mode: the workers append their
    lines to the same files, which the parent must not then overwrite."""
    paths = []
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            h.flush()
            if h.mode != "a":
                h.close()  # reopened, appending, by its next record
                h.mode = "a"
            paths.append(h.baseFilename)
    return paths


class _Terminated(Exception):
    pass


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated(f"signal {signum}")


def _launch_workers(job: dict[str, Any], world: int) -> None:
    """Run ``world`` DDP workers (:func:`_ddp_worker`) and wait for all of them.

    The workers run ``python -c`` with this package first on ``PYTHONPATH``; they get the
    variables of an externally launched job, so Lightning starts no processes itself. When one
    fails, or this process is interrupted or terminated, the others are stopped; a worker whose
    parent dies (even killed) gets SIGTERM from the kernel (Linux).

    Raises:
        Diverged, StageError: as a worker raised it (passed on through a file, see
            :func:`_write_worker_error`), so that the caller handles them as in one process.
        RuntimeError: a worker failed otherwise.
    """
    job = {**job, "log_files": _log_files(), "parent_pid": os.getpid()}
    run_dir = Path(job["run_dir"])
    _read_worker_errors(run_dir, world)  # stale files of an earlier run
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_ENV}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world), NODE_RANK="0"
    )
    log.info(
        "train: %d DDP processes (%s), port %s",
        world,
        "nccl" if torch.cuda.is_available() else "gloo, CPU",
        env["MASTER_PORT"],
    )
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    procs: list[subprocess.Popen] = []
    failed: tuple[int, int | None] | None = None
    try:
        for rank in range(world):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _WORKER_CMD, json.dumps(job)],
                    env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                )
            )
        while True:
            codes = [p.poll() for p in procs]
            bad = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                failed = bad[0]
                break
            if all(c == 0 for c in codes):
                return
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    error = _read_worker_errors(run_dir, world)
    if error is not None:
        raise error
    rank, code = failed
    raise RuntimeError(
        f"train: DDP worker rank {rank} of {world} exited with code {code} (its error is in the"
        " log above); the other workers were stopped"
    )


def _worker_error_file(run_dir: Path, rank: int) -> Path:
    return run_dir / f".worker-error-{rank}.json"


def _write_worker_error(run_dir: Path, rank: int, err: Exception) -> None:
    """Hand a worker's :class:`Diverged` or :class:`StageError` to the parent (a JSON file in
    ``run_dir``, written atomically), which raises it again."""
    if isinstance(err, Diverged):
        payload = {"type": "diverged", "step": err.step, "what": err.what}
    elif isinstance(err, StageError):
        payload = {"type": "stage", "scene": err.scene, "stage": err.stage}
        payload.update(cause=err.cause, hint=err.hint)
    else:
        return
    path = _worker_error_file(run_dir, rank)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)


def _read_worker_errors(run_dir: Path, world: int) -> Exception | None:
    """The error handed over by the lowest rank that wrote one (the files are removed)."""
    found: Exception | None = None
    for rank in range(world):
        path = _worker_error_file(run_dir, rank)
        if not path.exists():
            continue
        err: Exception | None
        try:
            e = json.loads(path.read_text())
            if e["type"] == "diverged":
                err = Diverged(e["step"], e["what"])
            else:
                err = StageError(e["scene"], e["stage"], e["cause"], e["hint"])
        except (ValueError, KeyError, OSError):
            err = None  # half written (the worker was stopped): the exit code speaks
        path.unlink(missing_ok=True)
        if found is None and err is not None:
            found = err
    return found


def _die_with_parent(parent: int) -> None:
    """Have the kernel SIGTERM this process when its parent dies (Linux), so that no worker
    holds a GPU after its job is gone."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # it died before the prctl
        sys.exit(1)


def _ddp_worker(job_json: str) -> None:
    """One DDP worker (started by :func:`_launch_workers`): rank ``$RANK`` of ``$WORLD_SIZE``.

    Loads the scene itself and runs :func:`_fit`. Logs go to stderr and, appended, to the
    parent's log files (rank 0 from INFO, the others warnings and errors only).
    """
    job = json.loads(job_json)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    _die_with_parent(job["parent_pid"])
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    handlers += [logging.FileHandler(f, mode="a") for f in job["log_files"]]
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s %(levelname)s %(name)s [rank {rank}]: %(message)s",
        datefmt="%H:%M:%S",
        handlers=handlers,
        force=True,
    )
    if rank:
        warnings.filterwarnings("ignore", message="no GPU found")  # rank 0 says it
    try:
        cfg = from_dict(TrainConfig, job["cfg"])
        if not torch.cuda.is_available():  # share the cores
            torch.set_num_threads(max(1, torch.get_num_threads() // world))
        data = load_scene(
            job["scene_dir"], scene=job["scene"], holdout_every=job.get("holdout_every", 0)
        )
        _fit(data, cfg, job, rank, world)
    except (Diverged, StageError) as err:
        # the parent reports it (the same on every rank for a divergence)
        log.error("train: DDP worker rank %d of %d: %s", rank, world, err)
        _write_worker_error(Path(job["run_dir"]), rank, err)
        sys.exit(1)
    except Exception:
        log.exception("train: DDP worker rank %d of %d failed", rank, world)
        sys.exit(1)

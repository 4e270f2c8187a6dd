"""Training entry point of one scene (rule ``train``): data, Lightning Trainer, checkpoints.

Outputs in ``out_dir``: ``last.ckpt``, ``config.json`` (the settings and scene facts) and
``metrics.csv`` (Lightning's CSV log: every loss term and PSNR per step). An interrupted run
resumes from its last checkpoint (see :func:`train_scene`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger

from .config import TrainConfig, to_dict
from .data import FrameSampler, SceneData, load_scene, make_batch
from .system import NSFFSystem

log = logging.getLogger(__name__)


class RayBatchStream(torch.utils.data.IterableDataset):
    """An endless stream of training batches (one frame per batch, see :class:`FrameSampler`)."""

    def __init__(self, data: SceneData, batch_size: int, seed: int) -> None:
        super().__init__()
        self.data = data
        self.sampler = FrameSampler(data.num_frames, data.hw, batch_size, seed=seed)

    def __iter__(self):
        while True:
            t = self.sampler.next_frame()
            yield make_batch(self.data, t, self.sampler.next_pixels(t))


def steps_per_epoch(cfg: TrainConfig, data: SceneData) -> int:
    """``cfg.steps_per_epoch``, or H * W * N / 1000 as nsff_pl (at least 1)."""
    if cfg.steps_per_epoch:
        return cfg.steps_per_epoch
    h, w = data.hw
    return max(1, h * w * data.num_frames // 1000)


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX bf16 tiles (Linux /proc/cpuinfo), where bf16 matmuls are ~3x fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags


def device_settings(precision: str = "auto") -> dict[str, Any]:
    """Accelerator and precision for Lightning.

    ``precision`` auto: bf16 autocast on GPUs that support it (and TF32 matmuls) and on CPUs
    with AMX; fp32 elsewhere. fp32 / bf16 force one. No GPU: a warning, since CPU training is
    slow.
    """
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"train.precision must be auto, fp32 or bf16, got {precision!r}")
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        bf16 = precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported())
        return {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed" if bf16 else "32"}
    warnings.warn("no GPU found: training runs on the CPU (slow)", stacklevel=2)
    bf16 = precision == "bf16" or (precision == "auto" and cpu_has_fast_bf16())
    return {"accelerator": "cpu", "devices": 1, "precision": "bf16-mixed" if bf16 else "32"}


class ProgressLog(pl.Callback):
    """Logs a line every ``every`` steps: loss, PSNR and training rays/s."""

    def __init__(self, every: int, batch_size: int, total: int) -> None:
        self.every, self.batch_size, self.total = every, batch_size, total
        self.t0 = time.perf_counter()
        self.step0 = 0

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.t0, self.step0 = time.perf_counter(), trainer.global_step

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every and step != self.total:
            return
        now = time.perf_counter()
        rays = (step - self.step0) * self.batch_size / max(now - self.t0, 1e-9)
        m = trainer.callback_metrics
        log.info(
            "train: step %d/%d, loss %.4f, PSNR %.2f dB, %.0f rays/s",
            step,
            self.total,
            float(m.get("loss/total", float("nan"))),
            float(m.get("train/psnr", float("nan"))),
            rays,
        )
        self.t0, self.step0 = now, step


#: settings that change how long training runs, not what it trains: a checkpoint written under
#: other values of these is still resumed
BUDGET_KEYS = ("epochs", "max_steps", "max_time_minutes", "checkpoint_every", "log_every")


def _resumable(run_dir: Path, facts: dict[str, Any]) -> Path | None:
    """The checkpoint in ``run_dir`` if it was written for the same scene and settings."""
    ckpt, meta = run_dir / "last.ckpt", run_dir / "config.json"
    if not (ckpt.exists() and meta.exists()):
        return None
    old = json.loads(meta.read_text())

    def key(f: dict[str, Any]) -> dict[str, Any]:
        train = {k: v for k, v in f["train"].items() if k not in BUDGET_KEYS}
        return {**{k: v for k, v in f.items() if k not in ("train", "max_steps")}, "train": train}

    if key(old) != key(facts):
        log.warning("train: %s was written with other settings; starting from scratch", ckpt)
        return None
    return ckpt


def train_scene(
    scene_dir: str | Path, out_dir: str | Path, cfg: TrainConfig, scene: str | None = None
) -> Path:
    """Train NSFF on the preprocessed scene in ``scene_dir``; returns ``out_dir/last.ckpt``.

    While training, checkpoints, ``config.json`` and ``metrics.csv`` live in
    ``out_dir/running/``, which Snakemake does not know about and so does not delete when a job
    dies: a rerun resumes from ``running/last.ckpt`` when it was written for the same scene and
    settings (the training budget may differ). On success the three files move to ``out_dir``.
    """
    out_dir = Path(out_dir)
    run_dir = out_dir / "running"
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = load_scene(scene_dir, scene=scene)
    spe = steps_per_epoch(cfg, data)
    total = cfg.max_steps or cfg.epochs * spe
    facts = {
        "train": to_dict(cfg),
        "num_frames": data.num_frames,
        "hw": list(data.hw),
        "steps_per_epoch": spe,
        "max_steps": total,
        "near_depth": data.near_depth,
        "normalization": data.normalization.to_dict(),
    }
    resume = _resumable(run_dir, facts) or _resumable(out_dir, facts)
    metrics = run_dir / "metrics.csv"
    if resume is not None and resume.parent == out_dir and (out_dir / "metrics.csv").exists():
        shutil.copy(out_dir / "metrics.csv", metrics)
    history = pd.read_csv(metrics) if resume is not None and metrics.exists() else None
    (run_dir / "config.json").write_text(json.dumps(facts, indent=2))

    system = NSFFSystem(
        to_dict(cfg),
        data.num_frames,
        data.K.tolist(),
        data.c2w.tolist(),
        spe,
        normalization=data.normalization.to_dict(),
        hw=list(data.hw),
    )
    stream = RayBatchStream(data, cfg.batch_size, cfg.seed)
    system.pixel_sampler = stream.sampler
    system.training_frames = data.rgb
    ckpt_cb = ModelCheckpoint(
        dirpath=run_dir,
        filename="step{step}",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=cfg.checkpoint_every,
        save_on_train_epoch_end=False,
    )
    trainer = pl.Trainer(
        max_steps=total,
        max_time=timedelta(minutes=cfg.max_time_minutes) if cfg.max_time_minutes else None,
        limit_train_batches=spe,
        max_epochs=-1,
        logger=CSVLogger(save_dir=run_dir, name="", version=""),
        callbacks=[ckpt_cb, ProgressLog(cfg.log_every, cfg.batch_size, total)],
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        **device_settings(cfg.precision),
    )
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=0)
    if resume is not None:
        log.info("train: resuming from %s", resume)
    log.info(
        "train: %d frames %dx%d, %d steps (%d per epoch), %d rays per step",
        data.num_frames,
        data.hw[1],
        data.hw[0],
        total,
        spe,
        cfg.batch_size,
    )
    trainer.fit(system, train_dataloaders=loader, ckpt_path=str(resume) if resume else None)
    trainer.save_checkpoint(run_dir / "last.ckpt")
    if history is not None:
        # Lightning's CSV logger starts a new file on resume (and leaves none when the run was
        # already complete): keep the earlier steps in it
        if metrics.exists():
            new = pd.read_csv(metrics)
            old = history[history["step"] < new["step"].min()]
            history = pd.concat([old, new], ignore_index=True)
        history.to_csv(metrics, index=False)
    for name in ("config.json", "metrics.csv", "last.ckpt"):  # the checkpoint last: it marks done
        os.replace(run_dir / name, out_dir / name)
    shutil.rmtree(run_dir)
    return out_dir / "last.ckpt"

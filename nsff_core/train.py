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
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
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

from .config import TrainConfig, from_dict, to_dict
from .data import FrameSampler, SceneData, load_scene, make_batch
from .errors import ConfigError
from .system import NSFFSystem

log = logging.getLogger(__name__)


class RayBatchStream(torch.utils.data.IterableDataset):
    """An endless stream of training batches (one frame per batch, see :class:`FrameSampler`).

    Under DDP every process has its own stream, seeded ``train.seed + rank``.
    """

    def __init__(self, data: SceneData, batch_size: int, seed: int) -> None:
        super().__init__()
        self.data = data
        self.sampler = FrameSampler(data.num_frames, data.hw, batch_size, seed=seed)

    def __iter__(self):
        while True:
            t = self.sampler.next_frame()
            yield make_batch(self.data, t, self.sampler.next_pixels(t))


def steps_per_epoch(cfg: TrainConfig, data: SceneData, world_size: int = 1) -> int:
    """Steps per epoch of each of ``world_size`` processes.

    One process: ``cfg.steps_per_epoch``, or H * W * N / 1000 as nsff_pl (at least 1). An epoch
    is that many batches of rays whatever the number of processes, and each of them draws a
    batch per step, so N processes take ceil(that / N) steps per epoch.
    """
    if cfg.steps_per_epoch:
        single = cfg.steps_per_epoch
    else:
        h, w = data.hw
        single = max(1, h * w * data.num_frames // 1000)
    return max(1, math.ceil(single / world_size))


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
        bf16 = precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported())
        return {
            "accelerator": "gpu",
            "devices": devices,
            "precision": "bf16-mixed" if bf16 else "32",
        }
    if devices > 1:
        warnings.warn(
            f"no GPU found: train.gpus={devices} trains in {devices} CPU processes (DDP, gloo;"
            " slow, meant for tests)",
            stacklevel=2,
        )
    else:
        warnings.warn("no GPU found: training runs on the CPU (slow)", stacklevel=2)
    bf16 = precision == "bf16" or (precision == "auto" and cpu_has_fast_bf16())
    return {"accelerator": "cpu", "devices": devices, "precision": "bf16-mixed" if bf16 else "32"}


class ProgressLog(pl.Callback):
    """Logs a line every ``every`` steps: loss, PSNR and training rays/s (``batch_size``: the
    rays of one step over all processes)."""

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
    """The checkpoint in ``run_dir`` if it was written for the same scene and settings.

    The number of processes (``train.gpus``, ``world_size``) is a setting: another value
    changes the epoch length and the ray streams, so the run starts from scratch.
    """
    ckpt, meta = run_dir / "last.ckpt", run_dir / "config.json"
    if not (ckpt.exists() and meta.exists()):
        return None
    old = json.loads(meta.read_text())
    # written before train.gpus existed: one process
    old.setdefault("world_size", 1)
    old["train"].setdefault("gpus", 1)

    def key(f: dict[str, Any]) -> dict[str, Any]:
        train = {k: v for k, v in f["train"].items() if k not in BUDGET_KEYS}
        return {**{k: v for k, v in f.items() if k not in ("train", "max_steps")}, "train": train}

    if key(old) != key(facts):
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
    return ckpt


def train_scene(
    scene_dir: str | Path, out_dir: str | Path, cfg: TrainConfig, scene: str | None = None
) -> Path:
    """Train NSFF on the preprocessed scene in ``scene_dir``; returns ``out_dir/last.ckpt``.

    While training, checkpoints, ``config.json`` and ``metrics.csv`` live in
    ``out_dir/running/``, which Snakemake does not know about and so does not delete when a job
    dies: a rerun resumes from ``running/last.ckpt`` when it was written for the same scene and
    settings (the training budget may differ). On success the three files move to ``out_dir``.

    ``cfg.gpus`` > 1: the training runs in that many DDP worker processes (see the module
    docstring); this process prepares the run, waits for them and then finishes the run.
    """
    out_dir = Path(out_dir)
    run_dir = out_dir / "running"
    world = cfg.gpus
    if world < 1:
        raise ConfigError(f"train.gpus must be at least 1, got {world}")
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    data = load_scene(scene_dir, scene=scene)
    spe = steps_per_epoch(cfg, data, world)
    total = cfg.max_steps or cfg.epochs * spe
    facts = {
        "train": to_dict(cfg),
        "num_frames": data.num_frames,
        "hw": list(data.hw),
        "steps_per_epoch": spe,
        "max_steps": total,
        "world_size": world,
        "near_depth": data.near_depth,
        "normalization": data.normalization.to_dict(),
    }
    resume = _resumable(run_dir, facts) or _resumable(out_dir, facts)
    metrics = run_dir / "metrics.csv"
    if resume is not None and resume.parent == out_dir and (out_dir / "metrics.csv").exists():
        shutil.copy(out_dir / "metrics.csv", metrics)
    history = pd.read_csv(metrics) if resume is not None and metrics.exists() else None
    (run_dir / "config.json").write_text(json.dumps(facts, indent=2))

    if resume is not None:
        log.info("train: resuming from %s", resume)
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
    job = {
        "scene_dir": str(scene_dir),
        "scene": scene,
        "run_dir": str(run_dir),
        "cfg": to_dict(cfg),
        "steps_per_epoch": spe,
        "max_steps": total,
        "resume": str(resume) if resume is not None else None,
    }
    if world == 1:
        _fit(data, cfg, job)
    else:
        _check_devices(world)
        del data  # the workers load their own copy
        _launch_workers(job, world)

    if history is not None:
        # Lightning's CSV logger starts a new file on resume (and leaves none when the run was
        # already complete): keep the earlier steps in it
        if metrics.exists():
            new = pd.read_csv(metrics)
            old = history[history["step"] < new["step"].min()]
            history = pd.concat([old, new], ignore_index=True)
        history.to_csv(metrics, index=False)
    # copies first, the checkpoint moved last (it marks the run done): a kill in between leaves
    # running/ complete, so the rerun resumes from it instead of starting again
    for name in ("config.json", "metrics.csv"):
        shutil.copy2(run_dir / name, out_dir / name)
    os.replace(run_dir / "last.ckpt", out_dir / "last.ckpt")
    shutil.rmtree(run_dir)
    return out_dir / "last.ckpt"


def _fit(
    data: SceneData, cfg: TrainConfig, job: dict[str, Any], rank: int = 0, world: int = 1
) -> None:
    """Lightning fit in this process, rank ``rank`` of ``world``, then ``last.ckpt`` in
    ``job["run_dir"]``. Under DDP every rank runs this; only rank 0 writes files (Lightning's
    checkpoints and CSV log are rank-zero only)."""
    run_dir = Path(job["run_dir"])
    spe, total, resume = job["steps_per_epoch"], job["max_steps"], job["resume"]
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    system = NSFFSystem(
        to_dict(cfg),
        data.num_frames,
        data.K.tolist(),
        data.c2w.tolist(),
        spe,
        normalization=data.normalization.to_dict(),
        hw=list(data.hw),
    )
    if rank:
        # its own density noise (DDP starts every rank from rank 0's weights); seed_everything,
        # since Lightning reseeds from it when it sets up DDP
        pl.seed_everything(cfg.seed + rank, workers=True, verbose=False)
    stream = RayBatchStream(data, cfg.batch_size, cfg.seed + rank)
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
    trainer = pl.Trainer(
        max_steps=total,
        max_time=timedelta(minutes=cfg.max_time_minutes) if cfg.max_time_minutes else None,
        limit_train_batches=spe,
        max_epochs=-1,
        logger=CSVLogger(save_dir=run_dir, name="", version=""),
        callbacks=[ckpt_cb, ProgressLog(cfg.log_every, cfg.batch_size * world, total)],
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        **device_settings(cfg.precision, world),
        **distributed,
    )
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=0)
    trainer.fit(system, train_dataloaders=loader, ckpt_path=resume)
    trainer.save_checkpoint(run_dir / "last.ckpt")


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
_WORKER_CMD = "import sys; from nsff_core.train import _ddp_worker; _ddp_worker(sys.argv[1])"


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
    """
    job = {**job, "log_files": _log_files(), "parent_pid": os.getpid()}
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
            failed = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                rank, code = failed[0]
                raise RuntimeError(
                    f"train: DDP worker rank {rank} of {world} exited with code {code} (its"
                    " error is in the log above); the other workers were stopped"
                )
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
        data = load_scene(job["scene_dir"], scene=job["scene"])
        _fit(data, cfg, job, rank, world)
    except Exception:
        log.exception("train: DDP worker rank %d of %d failed", rank, world)
        sys.exit(1)

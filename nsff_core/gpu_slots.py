"""GPU slot claims: concurrently running local GPU jobs land on distinct devices.

With ``snakemake --resources gpu=N`` Snakemake only *counts* GPUs; it never says which device a
job should use, so without help every job would start on device 0. A GPU job therefore calls
:func:`claim_gpus` (or :func:`claim_for_job`) **before torch is imported**. The claim:

1. takes the candidate device ids from ``devices``, else the environment variable
   ``NSFF_GPU_DEVICES`` (comma list, e.g. ``"0,1,2"``; an empty value means "no GPUs"), else the
   GPUs listed by ``nvidia-smi -L``; with no candidates it returns an empty claim and changes
   nothing, so CPU-only machines run as before;
2. holds one lock file per device id in ``lock_dir`` (default ``NSFF_GPU_LOCK_DIR``, else
   ``/tmp/nsff-gpu-locks-<uid>``) with ``fcntl.flock(LOCK_EX | LOCK_NB)`` on an open file
   descriptor. The kernel drops a flock when the last descriptor of the open file is closed, so
   the slot is freed when the job ends *or dies*, even by SIGKILL: no stale locks to clean up.
   The holder's pid is written into the file for humans (``cat`` it; it is not used for locking);
3. waits, polling every ``poll`` seconds, until ``count`` slots are free at the same time (it
   never holds some slots while waiting for others, so jobs cannot deadlock);
4. sets ``CUDA_VISIBLE_DEVICES`` to the claimed ids, so torch sees them as ``cuda:0..count-1``.

Skip rule: when a scheduler (or the user) already assigned devices, the claim does nothing and
leaves the environment untouched. "Already assigned" means ``CUDA_VISIBLE_DEVICES`` is set (even
to an empty value), or ``SLURM_JOB_GPUS`` or ``SLURM_STEP_GPUS`` is set.

The locks coordinate the processes that use the same lock directory: the default is per user;
point ``NSFF_GPU_LOCK_DIR`` at a shared, writable directory to coordinate several users.
Child processes forked by a job (data-loader workers) inherit the descriptors, so the slot stays
held until they exit too.

This module uses the standard library only; it must not import torch or numpy.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("nsff.gpu_slots")

ENV_DEVICES = "NSFF_GPU_DEVICES"
ENV_LOCK_DIR = "NSFF_GPU_LOCK_DIR"
#: Variables that mean "devices were already assigned by a scheduler or by the user".
ASSIGNED_VARS = ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS")


def _say(msg: str, *args: object, level: int = logging.INFO) -> None:
    """Log, or write to stderr when logging is not configured yet (claims run that early)."""
    if logging.getLogger().hasHandlers() or log.handlers:
        log.log(level, msg, *args)
    else:
        print(f"gpu_slots: {msg % args}", file=sys.stderr, flush=True)


@dataclass
class Claim:
    """Device ids held by this process; release with :meth:`release` or ``with``.

    Keeping a reference is not needed: the locks live on raw file descriptors, which stay open
    (and locked) until :meth:`release` or process exit.
    """

    devices: list[str] = field(default_factory=list)
    reason: str = ""
    _fds: list[int] = field(default_factory=list, repr=False)
    _env_before: str | None = field(default=None, repr=False)
    _set_env: bool = field(default=False, repr=False)

    def __bool__(self) -> bool:
        return bool(self.devices)

    def __str__(self) -> str:
        if self.devices:
            return f"GPU slot(s) {','.join(self.devices)} claimed (CUDA_VISIBLE_DEVICES)"
        return f"no GPU slot claimed: {self.reason}"

    def release(self) -> None:
        """Unlock and close the lock files; restore CUDA_VISIBLE_DEVICES if we set it."""
        for fd in self._fds:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
        self._fds = []
        if self._set_env:
            if self._env_before is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = self._env_before
            self._set_env = False
        self.devices = []

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def assigned_by_scheduler(env: dict[str, str] | os._Environ[str] | None = None) -> str | None:
    """The variable that shows devices are already assigned, or ``None``."""
    env = os.environ if env is None else env
    for var in ASSIGNED_VARS:
        if var in env:
            return var
    return None


def _nvidia_smi_ids() -> list[str]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run(
            [exe, "-L"], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return re.findall(r"^GPU (\d+):", out, flags=re.MULTILINE)


def available_devices(devices: str | Sequence[str | int] | None = None) -> list[str]:
    """Candidate device ids: ``devices``, else ``NSFF_GPU_DEVICES``, else ``nvidia-smi -L``."""
    if devices is None:
        if ENV_DEVICES in os.environ:
            devices = os.environ[ENV_DEVICES]
        else:
            return _nvidia_smi_ids()
    if isinstance(devices, str):
        devices = devices.split(",")
    ids = [str(d).strip() for d in devices]
    ids = [d for d in ids if d]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate GPU device ids in {ids}")
    return ids


def default_lock_dir() -> Path:
    """``NSFF_GPU_LOCK_DIR``, else a per-user directory in the temp dir."""
    if os.environ.get(ENV_LOCK_DIR):
        return Path(os.environ[ENV_LOCK_DIR])
    return Path(tempfile.gettempdir()) / f"nsff-gpu-locks-{os.getuid()}"


def _try_lock(path: Path) -> int | None:
    """A locked descriptor on ``path``, or ``None`` if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _lock_name(device: str) -> str:
    return "gpu-" + re.sub(r"[^A-Za-z0-9_.-]", "_", device) + ".lock"


def claim_gpus(
    count: int = 1,
    devices: str | Sequence[str | int] | None = None,
    lock_dir: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    poll: float = 0.2,
) -> Claim:
    """Claim ``count`` distinct GPU ids and export them in ``CUDA_VISIBLE_DEVICES``.

    Call before torch is imported. Returns an empty :class:`Claim` (environment untouched) when
    ``count`` is 0, when a scheduler already assigned devices, or when no devices are known.

    Raises:
        ValueError: ``count`` exceeds the number of configured devices (it could never run).
        TimeoutError: ``timeout`` seconds passed without ``count`` free slots.
    """
    if count <= 0:
        return Claim(reason="the job needs no GPU")
    var = assigned_by_scheduler()
    if var is not None:
        reason = f"{var} is already set ({os.environ[var]!r}); using the assigned devices"
        _say("%s", reason)
        return Claim(reason=reason)
    ids = available_devices(devices)
    if not ids:
        return Claim(reason="no GPU devices configured or found")
    if count > len(ids):
        raise ValueError(
            f"the job asks for {count} GPUs but only {len(ids)} are configured ({','.join(ids)});"
            f" lower the rule's gpu resource or set {ENV_DEVICES}"
        )
    ldir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    ldir.mkdir(parents=True, exist_ok=True)

    start = time.monotonic()
    waiting_said = False
    while True:
        held: list[tuple[str, int]] = []
        for dev in ids:
            fd = _try_lock(ldir / _lock_name(dev))
            if fd is not None:
                held.append((dev, fd))
                if len(held) == count:
                    break
        if len(held) == count:
            break
        for _, fd in held:  # never hold part of a claim while waiting
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        if timeout is not None and time.monotonic() - start >= timeout:
            raise TimeoutError(
                f"no {count} free GPU slot(s) among {','.join(ids)} after {timeout:g} s"
                f" (locks in {ldir})"
            )
        if not waiting_said:
            _say(
                "waiting for %d free GPU slot(s) among %s (locks in %s)", count, ",".join(ids), ldir
            )
            waiting_said = True
        time.sleep(poll)

    claim = Claim(
        devices=[d for d, _ in held],
        _fds=[fd for _, fd in held],
        _env_before=os.environ.get("CUDA_VISIBLE_DEVICES"),
        _set_env=True,
    )
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(claim.devices)
    _say("%s (pid %d, locks in %s)", claim, os.getpid(), ldir)
    return claim


def claim_for_job(resources_gpu: int | str | None) -> Claim:
    """Claim the GPUs a Snakemake job declared (``snakemake.resources.gpu``); 0 does nothing."""
    try:
        count = int(resources_gpu or 0)
    except (TypeError, ValueError):
        count = 0
    return claim_gpus(count)

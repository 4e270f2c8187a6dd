"""GPU slot claims: concurrently running local GPU jobs land on distinct devices.

With ``snakemake --resources gpu=N`` Snakemake only *counts* GPUs; it never says which device a
job should use, so without help every job would start on device 0. A GPU job therefore calls
:func:`claim_gpus` (or :func:`claim_for_job`) **before torch is imported**. The claim:

1. takes the candidate device ids from ``devices``, else the environment variable
   ``NSFF_GPU_DEVICES`` (comma list, e.g. ``"0,1,2"``; an empty value means "no GPUs"), else the
   GPUs listed by ``nvidia-smi -L``; with no candidates it returns an empty claim and changes
   nothing, so CPU-only machines run as before;
2. holds one lock file per device id in ``lock_dir`` (default ``NSFF_GPU_LOCK_DIR``, else
   ``<tmp>/nsff-gpu-locks-<uid>``, see :func:`default_lock_dir`) with
   ``fcntl.flock(LOCK_EX | LOCK_NB)`` on an open file descriptor. The kernel drops a flock when the last descriptor of the open file is closed, so
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

Safety. The default directory has a predictable name in the shared temp dir, so another local
user could create it first (and fill it with links, or hold its locks). It is therefore created
with mode 0700, and used only when it is a real directory (not a symbolic link) owned by the
current user that neither group nor others can write; otherwise the claim stops with a
:class:`LockDirError` that says what to do. A directory set with ``NSFF_GPU_LOCK_DIR`` (or
passed as ``lock_dir``) is the user's choice and may be shared by a group, so it is not checked
that way. In every directory, lock files are opened with ``O_NOFOLLOW`` and must be regular
files: a symbolic link (or a FIFO, a device) planted in place of a lock file is refused, and the
holder's pid is written only into a file with a single link (never through a hard link into
some other file). A lock file another user created and that we cannot write is locked
read-only (``flock`` needs no write access).
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
import stat
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


class LockDirError(ValueError):
    """The GPU lock directory or a lock file in it is unsafe to use (the message says why and
    what to do). A ``ValueError``, as a claim that could never succeed: the rule's
    :func:`~nsff_core.workflow.stage.run_stage` reports it as a user error of the job."""


def private_lock_dir() -> Path:
    """The per-user default lock directory: ``<tmp>/nsff-gpu-locks-<uid>``.

    One fixed name per user (not ``$XDG_RUNTIME_DIR``, which exists only during a login session
    and differs between a session and a cron or batch job): every job of the user must find
    the same locks, or two of them could take the same GPU.
    """
    return Path(tempfile.gettempdir()) / f"nsff-gpu-locks-{os.getuid()}"


def default_lock_dir() -> Path:
    """``NSFF_GPU_LOCK_DIR``, else :func:`private_lock_dir`."""
    if os.environ.get(ENV_LOCK_DIR):
        return Path(os.environ[ENV_LOCK_DIR])
    return private_lock_dir()


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` with mode 0700, or check the one there: a directory (not a link) owned
    by this user that group and others cannot write.

    Raises:
        LockDirError: it is a link or no directory, another user owns it, or it is group- or
            world-writable; the message says how to fix it or to use another directory.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    problem = None
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "is not a directory"
    elif st.st_uid != os.getuid():
        problem = f"belongs to user id {st.st_uid}, not to you (user id {os.getuid()})"
    elif st.st_mode & 0o022:
        problem = f"can be written by its group or by others (mode {stat.S_IMODE(st.st_mode):o})"
    if problem:
        raise LockDirError(
            f"the GPU lock directory {path} {problem}: another user could take over or block "
            "the GPU slot locks, so it is not used. If you created it and trust it, run "
            f"`chmod 700 {path}` (it must be yours); otherwise remove it if you can, or set "
            f"{ENV_LOCK_DIR} to a directory of your own (e.g. {ENV_LOCK_DIR}=$HOME/.nsff-gpu-locks)"
        )


def _try_lock(path: Path) -> int | None:
    """A locked descriptor on ``path``, or ``None`` if another process holds it.

    Raises:
        LockDirError: ``path`` is a symbolic link or not a regular file.
    """
    flags = os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK  # O_NONBLOCK: a planted FIFO never blocks
    try:
        try:
            fd = os.open(path, os.O_RDWR | flags, 0o666)
        except PermissionError:  # another user's lock file in a shared directory
            fd = os.open(path, os.O_RDONLY | flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LockDirError(
                f"the GPU lock file {path} is a symbolic link; refusing to follow it. Remove it "
                "(lock files are plain files; whoever made it a link may be tampering with the "
                "locks)"
            ) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise LockDirError(f"the GPU lock file {path} is not a regular file; remove it")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    # the pid is for humans; only into a file of ours with one link (not via a hard link)
    writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDWR
    if writable and st.st_nlink == 1:
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
    if lock_dir is not None:
        ldir = Path(lock_dir)
    elif os.environ.get(ENV_LOCK_DIR):
        ldir = Path(os.environ[ENV_LOCK_DIR])
    else:
        ldir = None
    if ldir is not None:  # the user's choice, possibly shared by a group
        ldir.mkdir(parents=True, exist_ok=True)
    else:
        ldir = private_lock_dir()
        ensure_private_dir(ldir)

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

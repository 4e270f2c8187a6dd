"""GPU slot claims: distinct devices for concurrent jobs, slots freed by dead jobs, skip rules."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from itertools import combinations
from pathlib import Path

import pytest

from nsff_core.workflow import gpu_slots
from nsff_core.workflow.gpu_slots import claim_for_job, claim_gpus

REPO = Path(__file__).resolve().parents[1]

WORKER = """
import os, sys, time
from nsff_core.workflow.gpu_slots import claim_gpus
claim = claim_gpus(1, lock_dir=sys.argv[1], poll=0.02)
t0 = time.monotonic()
time.sleep(float(sys.argv[3]))
t1 = time.monotonic()
line = f"{claim.devices[0]} {os.environ['CUDA_VISIBLE_DEVICES']} {t0} {t1}\\n"
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
os.write(fd, line.encode())
os.close(fd)
"""

HOLDER = """
import sys, time
from nsff_core.workflow.gpu_slots import claim_gpus
claim = claim_gpus(1, lock_dir=sys.argv[1], poll=0.02)
print(claim.devices[0], flush=True)
time.sleep(60)
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for var in (*gpu_slots.ASSIGNED_VARS, gpu_slots.ENV_DEVICES, gpu_slots.ENV_LOCK_DIR):
        monkeypatch.delenv(var, raising=False)


def _child_env(devices: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in gpu_slots.ASSIGNED_VARS}
    env[gpu_slots.ENV_DEVICES] = devices
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def test_concurrent_jobs_get_distinct_ids(tmp_path):
    out = tmp_path / "intervals.txt"
    locks = tmp_path / "locks"
    env = _child_env("0,1,2")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(locks), str(out), "0.5"], env=env, cwd=tmp_path
        )
        for _ in range(6)
    ]
    for p in procs:
        assert p.wait(timeout=30) == 0
    rows = [line.split() for line in out.read_text().splitlines()]
    assert len(rows) == 6
    jobs = [(dev, float(t0), float(t1)) for dev, visible, t0, t1 in rows]
    for dev, visible, _, _ in rows:
        assert visible == dev
        assert dev in {"0", "1", "2"}
    # no two jobs that ran at the same time held the same id
    for (d1, s1, e1), (d2, s2, e2) in combinations(jobs, 2):
        if d1 == d2:
            assert e1 <= s2 or e2 <= s1, f"device {d1} shared by overlapping jobs"
    # never more than 3 at a time
    for _, s, _ in jobs:
        running = sum(1 for _, s2, e2 in jobs if s2 <= s < e2)
        assert running <= 3


def test_killed_job_slot_is_reused(tmp_path):
    locks = tmp_path / "locks"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(locks)],
        env=_child_env("7"),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "7"
        assert (locks / "gpu-7.lock").read_text().strip() == str(holder.pid)
        with pytest.raises(TimeoutError):
            claim_gpus(1, devices="7", lock_dir=locks, timeout=0.3, poll=0.05)
        assert "CUDA_VISIBLE_DEVICES" not in os.environ
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        holder.stdout.close()
    t = time.monotonic()
    with claim_gpus(1, devices="7", lock_dir=locks, timeout=2, poll=0.05) as claim:
        assert claim.devices == ["7"]
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "7"
        assert (locks / "gpu-7.lock").read_text().strip() == str(os.getpid())
    assert time.monotonic() - t < 1.0
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


@pytest.mark.parametrize(
    "var,value",
    [
        ("CUDA_VISIBLE_DEVICES", "5"),
        ("CUDA_VISIBLE_DEVICES", ""),
        ("SLURM_JOB_GPUS", "3"),
        ("SLURM_STEP_GPUS", "1"),
    ],
)
def test_skip_when_scheduler_assigned(tmp_path, monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    before = dict(os.environ)
    claim = claim_gpus(1, devices="0,1", lock_dir=tmp_path / "locks")
    assert not claim and claim.devices == []
    assert var in claim.reason
    assert dict(os.environ) == before
    assert not (tmp_path / "locks").exists()
    claim.release()
    assert dict(os.environ) == before


def test_no_devices_is_empty_claim(tmp_path, monkeypatch):
    before = dict(os.environ)
    monkeypatch.setattr(gpu_slots.shutil, "which", lambda name: None)  # no nvidia-smi
    for claim in (
        claim_gpus(1, lock_dir=tmp_path / "locks"),
        claim_gpus(1, devices="", lock_dir=tmp_path / "locks"),
        claim_for_job(0),
        claim_for_job(None),
    ):
        assert not claim and claim.devices == []
        assert dict(os.environ) == before
    monkeypatch.setenv(gpu_slots.ENV_DEVICES, "")  # explicit "no GPUs"
    assert not claim_gpus(1, lock_dir=tmp_path / "locks")
    assert not (tmp_path / "locks").exists()


def test_nvidia_smi_listing(monkeypatch):
    listing = "GPU 0: NVIDIA H100 (UUID: GPU-aa)\nGPU 1: NVIDIA H100 (UUID: GPU-bb)\n"
    monkeypatch.setattr(gpu_slots.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(
        gpu_slots.subprocess,
        "run",
        lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=listing, stderr=""),
    )
    assert gpu_slots.available_devices() == ["0", "1"]


def test_count_two_distinct_ids(tmp_path, monkeypatch):
    locks = tmp_path / "locks"
    monkeypatch.setenv(gpu_slots.ENV_DEVICES, "0,1,2")
    monkeypatch.setenv(gpu_slots.ENV_LOCK_DIR, str(locks))
    claim = claim_for_job(2)
    try:
        assert len(claim.devices) == 2 and len(set(claim.devices)) == 2
        assert os.environ["CUDA_VISIBLE_DEVICES"] == ",".join(claim.devices)
        assert set(claim.devices) <= {"0", "1", "2"}
        for dev in claim.devices:
            assert (locks / f"gpu-{dev}.lock").read_text().strip() == str(os.getpid())
    finally:
        claim.release()
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    with pytest.raises(ValueError, match="asks for 4 GPUs"):
        claim_gpus(4, devices="0,1,2", lock_dir=locks)


def test_partial_claim_skips_held_slot(tmp_path):
    locks = tmp_path / "locks"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(locks)],
        env=_child_env("0,1,2"),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        held = holder.stdout.readline().strip()
        with claim_gpus(2, devices="0,1,2", lock_dir=locks, timeout=2, poll=0.05) as claim:
            assert sorted(claim.devices) == sorted({"0", "1", "2"} - {held})
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_module_does_not_import_torch_or_numpy():
    code = "import sys, nsff_core.workflow.gpu_slots; print(sorted({'torch', 'numpy'} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=_child_env("0"),
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------- lock directory safety


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """The temp dir of the default lock directory, in tmp_path; umask 022 as on most systems."""
    monkeypatch.setattr(gpu_slots.tempfile, "gettempdir", lambda: str(tmp_path))
    old = os.umask(0o022)
    yield tmp_path / f"nsff-gpu-locks-{os.getuid()}"
    os.umask(old)


def test_default_lock_dir_is_created_private(private_tmp):
    with claim_gpus(1, devices="0", timeout=1) as claim:
        assert claim.devices == ["0"]
    st = private_tmp.stat()
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()


def _owned_by_someone_else(path: Path, monkeypatch) -> None:
    """Make ``path`` look owned by another user: chown as root, else pretend to be another."""
    if os.geteuid() == 0:
        os.chown(path, 4242, 4242)
    else:
        me = os.getuid()
        monkeypatch.setattr(gpu_slots.os, "getuid", lambda: me + 1)
        path.rename(path.with_name(f"nsff-gpu-locks-{me + 1}"))


def test_a_default_dir_created_by_another_user_is_refused(private_tmp, monkeypatch):
    private_tmp.mkdir(mode=0o700)
    _owned_by_someone_else(private_tmp, monkeypatch)
    with pytest.raises(gpu_slots.LockDirError, match="belongs to user id") as info:
        claim_gpus(1, devices="0", timeout=1)
    assert gpu_slots.ENV_LOCK_DIR in str(info.value)
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    assert not any(private_tmp.parent.glob("nsff-gpu-locks-*/gpu-*.lock"))


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o1777])
def test_a_group_or_world_writable_default_dir_is_refused(private_tmp, mode):
    private_tmp.mkdir()
    os.chmod(private_tmp, mode)
    with pytest.raises(gpu_slots.LockDirError, match="written by its group or by others") as e:
        claim_gpus(1, devices="0", timeout=1)
    assert f"chmod 700 {private_tmp}" in str(e.value)
    assert not list(private_tmp.iterdir())


def test_a_symlinked_default_dir_is_refused(private_tmp, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    private_tmp.symlink_to(elsewhere)
    with pytest.raises(gpu_slots.LockDirError, match="is a symbolic link"):
        claim_gpus(1, devices="0", timeout=1)
    assert not list(elsewhere.iterdir())


def test_an_explicit_shared_lock_dir_may_be_group_writable(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o2775)
    monkeypatch.setenv(gpu_slots.ENV_LOCK_DIR, str(shared))
    with claim_gpus(1, devices="3", timeout=1) as claim:
        assert claim.devices == ["3"] and (shared / "gpu-3.lock").is_file()


def test_a_symlink_lock_file_is_refused(tmp_path):
    """Before: the claim followed the link and wrote its pid into the target."""
    locks = tmp_path / "locks"
    locks.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (locks / "gpu-0.lock").symlink_to(victim)
    with pytest.raises(gpu_slots.LockDirError, match="symbolic link"):
        claim_gpus(1, devices="0", lock_dir=locks, timeout=1)
    assert victim.read_text() == "precious\n"
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_a_hard_linked_lock_file_is_locked_but_not_written(tmp_path):
    locks = tmp_path / "locks"
    locks.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.link(victim, locks / "gpu-0.lock")
    with claim_gpus(1, devices="0", lock_dir=locks, timeout=1) as claim:
        assert claim.devices == ["0"]
    assert victim.read_text() == "precious\n"


def test_another_users_lock_file_in_a_shared_dir_is_locked_read_only(tmp_path, monkeypatch):
    locks = tmp_path / "locks"
    locks.mkdir()
    (locks / "gpu-0.lock").write_text("4242\n")
    real_open = os.open

    def no_write_access(path, flags, *args, **kwargs):  # as for a 0644 file of another user
        if flags & os.O_ACCMODE == os.O_RDWR:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(gpu_slots.os, "open", no_write_access)
    with claim_gpus(1, devices="0", lock_dir=locks, timeout=1) as claim:
        assert claim.devices == ["0"]
        assert gpu_slots._try_lock(locks / "gpu-0.lock") is None  # a real lock: held
    assert (locks / "gpu-0.lock").read_text() == "4242\n"


def test_an_unsafe_lock_dir_fails_the_rule_with_its_message(private_tmp, tmp_path, monkeypatch):
    """Inside a rule the refusal is a user error of the job, named in its log."""
    import logging
    from types import SimpleNamespace

    from nsff_core.workflow.stage import run_stage

    private_tmp.mkdir()
    os.chmod(private_tmp, 0o777)
    monkeypatch.setenv(gpu_slots.ENV_DEVICES, "0")
    smk = SimpleNamespace(
        rule="train",
        log=[str(tmp_path / "train.log")],
        wildcards=SimpleNamespace(scene="demo"),
        resources={"gpu": 1},
    )
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        with pytest.raises(SystemExit) as info, run_stage(smk):
            pytest.fail("the body must not run")
    finally:
        for h in root.handlers:
            if h not in saved[0]:
                h.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert info.value.code == 1
    text = (tmp_path / "train.log").read_text()
    assert "scene 'demo', rule 'train'" in text and f"chmod 700 {private_tmp}" in text
    assert "CUDA_VISIBLE_DEVICES" not in os.environ

"""Checkpoints: corrupt files name themselves and the rule that writes them, every load is
``weights_only``, saves are verified and fail loudly, and a corrupt ``running/last.ckpt`` is set
aside so that the rerun resumes from the checkpoint before it (or from scratch)."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import resource
import signal
import stat
import warnings
from pathlib import Path

import pytest
import torch

from nsff_core.config import TrainConfig
from nsff_core.errors import CorruptFileError, StageError
from nsff_core.model import losses
from nsff_core.model.checkpoint import (
    NonFiniteStateError,
    VerifiedCheckpointIO,
    load_checkpoint,
    save_checkpoint,
)

from .test_train import TINY, _rows

pytestmark = pytest.mark.stage

CFG = dict(TINY, max_steps=6, checkpoint_every=2)


@pytest.fixture(scope="module")
def trained(tiny_scene_dir, tmp_path_factory) -> Path:
    """A finished two-step run's ``last.ckpt`` (tests work on copies)."""
    from nsff_core.workflow.stages.train import train_scene

    out = tmp_path_factory.mktemp("trained")
    return train_scene(tiny_scene_dir, out, TrainConfig(**dict(TINY, max_steps=2)), "tiny")


def _copy(src: Path, dst: Path, size: int | None = None) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data if size is None else data[:size])
    return dst


class _Touch:
    """Unpickling this object creates ``path``: what weights_only=True must refuse to run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "nan"])
def test_a_corrupt_checkpoint_names_the_file_and_the_rule(trained, tmp_path, damage):
    from nsff_core.workflow.stages.render_split import load_system

    bad = tmp_path / "last.ckpt"
    if damage == "truncated":
        _copy(trained, bad, size=trained.stat().st_size // 2)
    elif damage == "garbage":
        bad.write_bytes(b"PK\x03\x04" + os.urandom(3000))
    elif damage == "empty":
        bad.write_bytes(b"")
    else:
        ckpt = load_checkpoint(trained)
        name = next(iter(ckpt["state_dict"]))
        ckpt["state_dict"][name] = ckpt["state_dict"][name] * float("nan")
        torch.save(ckpt, bad)
    with pytest.raises(CorruptFileError) as info:
        load_system(bad, "cpu")  # what render and evaluate call
    err = info.value
    assert err.path == str(bad) and err.made_by == "train"
    if damage == "nan":
        assert "NaN or inf" in err.cause and "diverged" in err.cause
    msg = str(err.to_stage_error("demo", "render"))
    assert "scene 'demo', rule 'render'" in msg and str(bad) in msg
    assert f"delete {bad} and rerun: rule 'train'" in msg


def test_loads_are_weights_only_whatever_the_environment_says(trained, tmp_path, monkeypatch):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD turns weights_only off for loads that leave it unset;
    ours set it, so a checkpoint that would run code on unpickling is refused."""
    from nsff_core.workflow.stages.render_split import load_system

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "code_ran"
    ckpt = load_checkpoint(trained)
    ckpt["extra"] = _Touch(marker)
    evil = tmp_path / "evil.ckpt"
    torch.save(ckpt, evil)
    for load in (load_checkpoint, lambda p: load_system(p, "cpu")):
        with pytest.raises(CorruptFileError, match="evil.ckpt"):
            load(evil)
    assert not marker.exists(), "weights_only=True was not in force"
    # the plugin Lightning resumes through ignores a weights_only=False request
    with pytest.raises(CorruptFileError):
        VerifiedCheckpointIO("demo").load_checkpoint(evil, weights_only=False)
    assert not marker.exists()


def test_the_training_resume_is_weights_only(tiny_scene_dir, trained, tmp_path, monkeypatch):
    """A running/last.ckpt whose unpickling would run code is set aside, never executed."""
    from nsff_core.workflow.stages.train import train_scene

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    out = tmp_path / "train"
    train_scene(tiny_scene_dir, out, TrainConfig(**dict(TINY, max_steps=2)), scene="tiny")
    running = out / "running"
    running.mkdir()
    (out / "config.json").rename(running / "config.json")
    ckpt = load_checkpoint(out / "last.ckpt")
    marker = tmp_path / "code_ran"
    ckpt["extra"] = _Touch(marker)
    torch.save(ckpt, running / "last.ckpt")
    last = train_scene(tiny_scene_dir, out, TrainConfig(**dict(TINY, max_steps=3)), "tiny")
    assert not marker.exists()
    assert load_checkpoint(last)["global_step"] == 3


def test_a_non_finite_state_is_never_written(trained, tmp_path):
    ckpt = load_checkpoint(trained)
    good = _copy(trained, tmp_path / "last.ckpt")
    before = good.read_bytes()
    exp_avg = next(iter(ckpt["optimizer_states"][0]["state"].values()))["exp_avg"]
    exp_avg.view(-1)[0] = float("inf")
    for save in (save_checkpoint, VerifiedCheckpointIO("demo").save_checkpoint):
        with pytest.raises(NonFiniteStateError, match=r"optimizer_states\[0\]"):
            save(ckpt, good)
        assert good.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_save_keeps_the_previous_checkpoint(trained, tmp_path):
    ckpt = load_checkpoint(trained)
    io = VerifiedCheckpointIO("demo")
    io.save_checkpoint(ckpt, tmp_path / "last.ckpt")
    ckpt["global_step"] = 3
    io.save_checkpoint(ckpt, tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "previous.ckpt"]
    assert load_checkpoint(tmp_path / "last.ckpt")["global_step"] == 3
    assert load_checkpoint(tmp_path / "previous.ckpt")["global_step"] == 2


class _Killed(Exception):
    """Stands for a job killed in the middle of a step."""


def _die_at_call(monkeypatch, n: int) -> None:
    real, calls = losses.color_loss, [0]

    def color_loss(rgb, target):
        calls[0] += 1
        if calls[0] == n:
            raise _Killed
        return real(rgb, target)

    monkeypatch.setattr(losses, "color_loss", color_loss)


@pytest.mark.parametrize("previous", [True, False])
def test_a_truncated_running_checkpoint_is_set_aside(
    tiny_scene_dir, tmp_path, monkeypatch, caplog, previous
):
    """A kill or a full disk cut running/last.ckpt short: the rerun sets it aside and resumes
    from previous.ckpt, or from scratch when there is none."""
    from nsff_core.workflow.stages.train import train_scene

    out, cfg = tmp_path / "train", TrainConfig(**CFG)
    with monkeypatch.context() as m:
        _die_at_call(m, 6)  # after the checkpoints of steps 2 and 4
        with pytest.raises(_Killed):
            train_scene(tiny_scene_dir, out, cfg, scene="tiny")
    running = out / "running"
    assert load_checkpoint(running / "previous.ckpt")["global_step"] == 2
    last = running / "last.ckpt"
    last.write_bytes(last.read_bytes()[:5000])
    if not previous:
        (running / "previous.ckpt").unlink()
    caplog.set_level(logging.INFO, logger="nsff_core.workflow.stages.train")
    done = train_scene(tiny_scene_dir, out, cfg, scene="tiny")
    log = caplog.text
    assert "last.ckpt: truncated or not a checkpoint" in log
    assert "set aside as last.ckpt.corrupt" in log
    if previous:
        assert f"resuming from {running / 'previous.ckpt'}" in log
    else:
        assert "starting from scratch" in log
    assert load_checkpoint(done)["global_step"] == 6
    assert [int(r["step"]) for r in _rows(out / "metrics.csv")] == list(range(6))


def _expect_save_error(excinfo, run_dir: Path) -> None:
    msg = str(excinfo.value)
    assert "scene 'tiny', rule 'train'" in msg
    assert f"could not save the checkpoint {run_dir / 'last.ckpt'}" in msg
    assert "writable" in msg and "free space" in msg


def test_a_failed_save_stops_training_and_names_the_file(tiny_scene_dir, tmp_path):
    """A write that fails part-way (a file-size limit makes every write past 60 kB fail with
    EFBIG, as a full disk fails with ENOSPC; this works as root too)."""
    from nsff_core.workflow.stages.train import train_scene

    out = tmp_path / "train"
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (60_000, limit[1]))
        with pytest.raises(StageError) as info:
            train_scene(tiny_scene_dir, out, TrainConfig(**CFG), scene="tiny")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, handler)
    _expect_save_error(info, out / "running")
    assert "File too large" in str(info.value)
    assert not list((out / "running").glob("*.ckpt")) and not list(out.glob("*.ckpt"))
    assert not list((out / "running").glob(".*tmp*")), "no scratch file is left"


_CAP_DAC = (1 << 1) | (1 << 2)  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH


@contextlib.contextmanager
def _file_permissions_apply():
    """Make file permissions apply to this thread even as root: drop the two capabilities that
    bypass them from its effective set (they stay permitted and come back afterwards)."""
    if os.geteuid() != 0:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)()  # 2 x (effective, permitted, inheritable)
    if libc.capget(header, data) != 0:
        pytest.skip("capget failed: cannot test file permissions as root")
    saved = (ctypes.c_uint32 * 6)(*data)
    data[0] &= ~_CAP_DAC
    if libc.capset(header, data) != 0:
        pytest.skip(f"capset failed ({os.strerror(ctypes.get_errno())})")
    try:
        yield
    finally:
        libc.capset(header, saved)


def test_a_read_only_running_folder_stops_training(tiny_scene_dir, tmp_path, monkeypatch):
    """After the first checkpoint, running/ and its last.ckpt become read-only. Lightning's
    default writer then skipped every later save without a word (the old file exists)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    from nsff_core.workflow.stages.train import train_scene

    out = tmp_path / "train"
    running = out / "running"
    real = ModelCheckpoint._save_checkpoint
    no_write = ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)

    def save_then_lock(self, trainer, filepath):
        real(self, trainer, filepath)
        for p in (running / "last.ckpt", running):
            p.chmod(p.stat().st_mode & no_write)

    monkeypatch.setattr(ModelCheckpoint, "_save_checkpoint", save_then_lock)
    probe = tmp_path / "probe"
    probe.mkdir(mode=0o555)
    try:
        with _file_permissions_apply():
            try:
                (probe / "x").touch()
                pytest.skip("file permissions do not apply here")
            except PermissionError:
                pass
            with pytest.raises(StageError) as info:
                train_scene(tiny_scene_dir, out, TrainConfig(**CFG), scene="tiny")
    finally:
        for p in (running, running / "last.ckpt"):
            if p.exists():
                p.chmod(0o755)
    _expect_save_error(info, running)
    assert "Permission denied" in str(info.value)
    assert load_checkpoint(running / "last.ckpt")["global_step"] == 2


def test_a_checkpoint_of_other_settings_is_never_resumed(tiny_scene_dir, tmp_path, monkeypatch):
    """A run of other settings left running/last.ckpt; a new run is killed before its first
    checkpoint. Its rerun must start from scratch, not resume the other run's checkpoint
    (config.json already names the new settings)."""
    from nsff_core.workflow.stages.train import train_scene

    out = tmp_path / "train"
    for cfg, call in ((dict(CFG, width=16), 4), (CFG, 1)):
        with monkeypatch.context() as m:
            _die_at_call(m, call)
            with pytest.raises(_Killed):
                train_scene(tiny_scene_dir, out, TrainConfig(**cfg), scene="tiny")
    last = train_scene(tiny_scene_dir, out, TrainConfig(**CFG), scene="tiny")
    assert load_checkpoint(last)["hyper_parameters"]["cfg"]["width"] == CFG["width"]
    assert [int(r["step"]) for r in _rows(out / "metrics.csv")] == list(range(6))


def test_a_deforming_dynamic_field_trains_and_comes_back_from_its_checkpoint(
    tiny_scene_dir, tmp_path
):
    from nsff_core.model.fields_planes import PlaneDeformDynamicField
    from nsff_core.workflow.stages.render_split import load_system
    from nsff_core.workflow.stages.train import train_scene

    cfg = TrainConfig(**dict(TINY, field="planes", grid_dynamic="deform", max_steps=3))
    ckpt = train_scene(tiny_scene_dir, tmp_path, cfg, "tiny")
    system = load_system(ckpt, "cpu")
    assert isinstance(system.dynamic_field, PlaneDeformDynamicField)
    saved = load_checkpoint(ckpt)["state_dict"]
    loaded = system.state_dict()
    assert set(saved) == set(loaded) and all(torch.equal(saved[k], loaded[k]) for k in saved)
    offset = system.dynamic_field.motion_decoder[-1]  # training moved the warp off the identity
    assert offset.weight[:3].abs().sum() > 0


def test_a_resumed_run_keeps_its_log_and_says_nothing_false_about_it(
    tiny_scene_dir, tmp_path, monkeypatch, caplog
):
    """A run killed after step 4 resumes and appends to metrics.csv; Lightning's warnings that
    earlier log files will be deleted (they are not), that training should start under srun
    (where SLURM is installed), that a resume in the middle of an epoch may give unreliable
    results (it trains as the uninterrupted run: the next test) and about its own deprecated
    torch call are not shown, nor its advertisement for a logging service."""
    from nsff_core.workflow.stages.train import QUIET_INFO, QUIET_WARNINGS, train_scene

    out, cfg = tmp_path / "train", TrainConfig(**CFG)
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with monkeypatch.context() as m:
            _die_at_call(m, 5)
            with pytest.raises(_Killed):
                train_scene(tiny_scene_dir, out, cfg, scene="tiny")
        done = train_scene(tiny_scene_dir, out, cfg, scene="tiny")
    assert load_checkpoint(done)["global_step"] == 6
    assert [int(r["step"]) for r in _rows(out / "metrics.csv")] == list(range(6))
    shown = [str(w.message) for w in seen]
    quiet = [s for s in shown if any(re.search(q, s) for q in QUIET_WARNINGS)]
    assert not quiet, quiet
    lines = [r.getMessage() for r in caplog.records]
    assert any("resuming from" in m for m in lines)  # our own line about the resume stays
    assert not [m for m in lines if any(re.search(q, m) for q in QUIET_INFO)]


@pytest.mark.parametrize(
    ("steps", "every", "kill_at"),
    [(6, 2, 4), (12, 10, 12)],
    ids=["mid-epoch", "at-an-epoch-end"],
)
def test_a_resumed_run_trains_as_the_uninterrupted_one(
    tiny_scene_dir, tmp_path, monkeypatch, steps, every, kill_at
):
    """Killed in step ``kill_at - 1`` and resumed from the checkpoint of step ``every`` (in the
    middle of the first epoch of 10 steps, or at its end), the run ends with the same weights
    and logs the same losses as one that was never interrupted: the checkpoint holds the ray
    stream and the random state of the render's jitter and noise, and nothing between the
    checkpoint and the next step draws from that state."""
    from nsff_core.workflow.stages.train import train_scene

    cfg = TrainConfig(**dict(TINY, max_steps=steps, checkpoint_every=every))
    whole = load_checkpoint(train_scene(tiny_scene_dir, tmp_path / "whole", cfg, scene="tiny"))
    out = tmp_path / "resumed"
    with monkeypatch.context() as m:
        _die_at_call(m, kill_at)
        with pytest.raises(_Killed):
            train_scene(tiny_scene_dir, out, cfg, scene="tiny")
    assert load_checkpoint(out / "running" / "last.ckpt")["global_step"] == every
    resumed = load_checkpoint(train_scene(tiny_scene_dir, out, cfg, scene="tiny"))
    assert resumed["global_step"] == whole["global_step"] == steps
    for name, value in whole["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], value), name
    logged = [_rows(d / "metrics.csv") for d in (tmp_path / "whole", out)]
    assert [r["loss/total"] for r in logged[1]] == [r["loss/total"] for r in logged[0]]

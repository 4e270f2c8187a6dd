"""Crashes, resuming and caching of the real workflow on the tiny synthetic scene.

A run killed with SIGKILL (the whole process group: Snakemake and its job) in the middle of the
frames, sfm and train stages is finished by rerunning it as a user would, with the same outputs
as an uninterrupted run, and training resumes from its last checkpoint. Dry runs check what a
changed setting reruns, and ``keep_intermediates: false`` deletes the intermediates.

To kill a stage at a known point rather than after a guessed sleep, the killed run imports a
``sitecustomize`` (written by the fixture ``stall_hook``) that stalls one call inside the job
process of one stage and writes a flag file; the test kills the process group once the flag
exists. The reruns run without it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from nsff_core.model.checkpoint import load_checkpoint

from .conftest import REPO
from .test_workflow import SNAKEMAKE, TINY_TRAIN, make_workdir, snakemake

pytestmark = pytest.mark.workflow

SHEET = "scene\tsource\ttrain_preset\tsplits\ntiny\tsynthetic:tiny\ttiny\ttest\n"
#: COLMAP with several threads gives another reconstruction on every run (even with its fixed
#: random_seed: measured up to 0.9 SfM units apart in c2w and 1.5 px in focal length on this
#: scene), with one thread the same one to the bit; one thread makes the sfm comparison exact.
SFM = {"num_threads": 1}

STALL_HOOK = '''\
"""Test hook (tests/test_resume.py): stall one call inside one Snakemake job.

NSFF_TEST_STALL = "script|module|attribute|n|flag": in the process that runs
workflow_scripts/<script>.py, the n-th call of module.attribute writes the flag file (its pid)
and sleeps until the test kills the process group. Every other process is untouched.
"""
import os
import sys

_spec = os.environ.get("NSFF_TEST_STALL", "")
if _spec and sys.argv and sys.argv[0].endswith("." + _spec.split("|")[0] + ".py"):
    import importlib
    import time

    _script, _module, _attr, _n, _flag = _spec.split("|")
    _owner = importlib.import_module(_module)
    *_parents, _name = _attr.split(".")
    for _p in _parents:
        _owner = getattr(_owner, _p)
    _orig = getattr(_owner, _name)
    _calls = [0]

    def _stall(*args, **kwargs):
        _calls[0] += 1
        if _calls[0] >= int(_n):
            with open(_flag + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(_flag + ".tmp", _flag)  # the test never sees an empty flag
            while True:
                time.sleep(3600)
        return _orig(*args, **kwargs)

    setattr(_owner, _name, _stall)
'''


@pytest.fixture(scope="module")
def stall_hook(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("stall_hook")
    (d / "sitecustomize.py").write_text(STALL_HOOK)
    return d


def new_workdir(path: Path, **overrides) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return make_workdir(path, SHEET, train_presets={"tiny": TINY_TRAIN}, sfm=SFM, **overrides)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A finished, uninterrupted run of the whole DAG (shared; tests work on copies)."""
    wd = new_workdir(tmp_path_factory.mktemp("reference"))
    r = snakemake(wd, "--cores", "2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return wd


def copy_workdir(src: Path, dst: Path) -> Path:
    """A copy with modification times (outputs and Snakemake's records in .snakemake/)."""
    shutil.copytree(src, dst, symlinks=True)
    return dst


def run_and_kill(wd: Path, target: str, stall: str, hook: Path, timeout: float = 300) -> str:
    """Start ``snakemake target`` in its own process group, wait until the job has reached the
    stall point ``stall`` ("script|module|attribute|n"), SIGKILL the group; return the log."""
    flag, log = wd / "stalled.pid", wd / "killed_run.log"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(hook), str(REPO)]),
        NSFF_TEST_STALL=f"{stall}|{flag}",
    )
    cmd = [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(wd), "--cores", "2", target]
    with open(log, "w") as out:
        p = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout
        while not flag.exists():
            assert p.poll() is None, f"snakemake ended before the stall:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no stall in {timeout} s:\n{log.read_text()}"
            time.sleep(0.05)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    # the job process was in Snakemake's process group: it is gone too
    job = int(flag.read_text())
    for _ in range(100):
        if not Path(f"/proc/{job}").exists() or "Z" in _proc_state(job):
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the stalled job (pid {job}) survived the kill of the process group")
    flag.unlink()
    return log.read_text()


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def unlock(wd: Path) -> None:
    r = snakemake(wd, "--unlock")
    assert r.returncode == 0 and "Unlocked working directory" in r.stdout + r.stderr


def assert_same_tree(a: Path, b: Path) -> None:
    """Same file names and bytes under two folders."""
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert fa == fb and fa, (a, b)
    for rel in fa:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def leftovers(res: Path) -> list[str]:
    """Scratch of the atomic writes (io.atomic_dir/atomic_file) that a kill leaves behind."""
    return sorted(p.name for p in res.glob(".*.tmp-*"))


def test_kill_during_frames_then_rerun_gives_the_same_priors(reference, stall_hook, tmp_path):
    """Killed while frames are being written: nothing looks complete; Snakemake's lock must be
    removed with --unlock (as its message says), then a plain rerun finishes."""
    wd = new_workdir(tmp_path / "wd")
    res, ref = wd / "results" / "tiny", reference / "results" / "tiny"
    target = "results/tiny/masks"  # frames, flow and masks (and the synthetic source)
    run_and_kill(wd, target, "frames|nsff_core.priors.frames|write_image|4", stall_hook)
    # frames are written to a scratch folder that replaces the output when complete
    assert not (res / "frames").exists() and not (res / "frames.json").exists()
    (scratch,) = leftovers(res)
    assert scratch.startswith(".frames.tmp-") and len(list((res / scratch).glob("*.png"))) == 3

    r = snakemake(wd, "--cores", "2", target)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "LockException" in out and "--unlock" in out, out[-2000:]
    unlock(wd)
    r = snakemake(wd, "--cores", "2", target)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    # no output of the killed job existed, so Snakemake has nothing it calls incomplete
    assert "Incomplete" not in out and "rerun-incomplete" not in out
    rerun = out.split("rule frames:")[1].split("\n\n")[0]
    assert "reason: Missing output files" in rerun, rerun

    for name in ("frames", "flow_fw", "flow_bw", "flow_ok", "masks"):
        assert_same_tree(res / name, ref / name)
    meta, ref_meta = (json.loads((d / "frames.json").read_text()) for d in (res, ref))
    assert meta.pop("source") == str(res / "source" / "video.mp4")  # the absolute source path
    ref_meta.pop("source")
    assert meta == ref_meta
    # a SIGKILL runs no clean-up; the rerun's successful write removes the killed job's scratch
    assert leftovers(res) == []


def test_kill_during_sfm_asks_for_rerun_incomplete_and_gives_the_same_cameras(
    reference, stall_hook, tmp_path
):
    """Killed after sfm/ and poses_bounds.npy were written, before cameras.npz: Snakemake
    refuses those outputs of the killed job until --rerun-incomplete, then its lock until
    --unlock; the rerun gives the same cameras."""
    wd = copy_workdir(reference, tmp_path / "wd")
    res, ref = wd / "results" / "tiny", reference / "results" / "tiny"
    for name in ("sfm", "cameras.npz", "poses_bounds.npy"):
        shutil.rmtree(res / name) if (res / name).is_dir() else (res / name).unlink()
    target = "results/tiny/cameras.npz"
    run_and_kill(wd, target, "sfm|nsff_core.model.io|write_cameras|1", stall_hook)
    assert (res / "sfm" / "sparse" / "0").is_dir() and (res / "poses_bounds.npy").exists()
    assert not (res / "cameras.npz").exists()

    # what a user sees, step by step: the incomplete files come first, then the lock
    r = snakemake(wd, "--cores", "2", target)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "IncompleteFilesException" in out, out[-2000:]
    assert "--rerun-incomplete" in out
    listed = out.split("Incomplete files:")[1].split()[:2]  # those that exist
    assert set(listed) == {"results/tiny/sfm", "results/tiny/poses_bounds.npy"}, out[-2000:]
    r = snakemake(wd, "--cores", "2", "--rerun-incomplete", target)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "LockException" in out and "--unlock" in out, out[-2000:]
    unlock(wd)
    r = snakemake(wd, "--cores", "2", "--rerun-incomplete", target)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]

    with np.load(res / "cameras.npz") as new, np.load(ref / "cameras.npz") as old:
        assert sorted(new.files) == sorted(old.files)
        for key in old.files:
            np.testing.assert_array_equal(new[key], old[key], err_msg=key)
    np.testing.assert_array_equal(
        np.load(res / "poses_bounds.npy"), np.load(ref / "poses_bounds.npy")
    )
    assert [p.name for p in sorted((res / "sfm" / "sparse" / "0").iterdir())] == [
        p.name for p in sorted((ref / "sfm" / "sparse" / "0").iterdir())
    ]
    # the scratch file of the cameras.npz being written when the job was killed is gone too
    assert leftovers(res) == []


def test_kill_during_train_resumes_from_the_last_checkpoint(reference, stall_hook, tmp_path):
    """Killed at step 26 of 30 (checkpoints every 10 steps): the rerun resumes at step 20 and
    ends with every step once in metrics.csv and a checkpoint at step 30."""

    wd = copy_workdir(reference, tmp_path / "wd")
    res = wd / "results" / "tiny"
    shutil.rmtree(res / "train")
    target = "results/tiny/train/last.ckpt"
    steps, every = TINY_TRAIN["max_steps"], TINY_TRAIN["checkpoint_every"]
    stall_at = 2 * every + 6  # the 26th training step: its checkpoint is step 20's
    run_and_kill(
        wd,
        target,
        f"train|nsff_core.workflow.stages.train|ProgressLog.on_train_batch_end|{stall_at}",
        stall_hook,
    )
    running = res / "train" / "running"
    assert not (res / "train" / "last.ckpt").exists()  # outputs appear only at the end
    saved = load_checkpoint(running / "last.ckpt")
    assert saved["global_step"] == 2 * every

    unlock(wd)
    r = snakemake(wd, "--cores", "2", target)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "Incomplete" not in out  # no output of train existed when it was killed
    log = (res / "logs" / "train.log").read_text()
    assert "train: resuming from results/tiny/train/running/last.ckpt" in log
    logged = [int(s.split("/")[0]) for s in log.split("train: step ")[1:]]
    assert logged and min(logged) > 2 * every, log  # no step before the checkpoint again
    final = load_checkpoint(res / "train" / "last.ckpt")
    assert final["global_step"] == steps
    metrics = pd.read_csv(res / "train" / "metrics.csv")
    assert metrics["step"].tolist() == list(range(steps))  # every step exactly once
    assert not running.exists()


def dry_run(wd: Path, *args: str) -> tuple[dict[str, int], str]:
    """The jobs ``snakemake -n`` plans (rule -> count, from its job stats) and its output."""
    r = snakemake(wd, "-n", "--cores", "2", *args)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    if "Nothing to be done" in out:
        return {}, out
    table = out.split("Job stats:")[1].split("total")[0].splitlines()[3:]
    return {rule: int(n) for rule, n in (line.split() for line in table if line.strip())}, out


def edit_config(wd: Path, section: str, **values) -> None:
    cfg = yaml.safe_load((wd / "config.yaml").read_text())
    cfg[section].update(values)
    (wd / "config.yaml").write_text(yaml.safe_dump(cfg))


# What depends on what: render reads train/last.ckpt and cameras.npz; evaluate reads the render
# of the split `test` (its PSNR is computed on those frames), the checkpoint, cameras, frames and
# masks; export reads the checkpoint (not the renders); summary reads eval/metrics.json,
# train/metrics.csv and the exports; `all` asks for them all. Nothing upstream of train reads a
# render or train setting.
AFTER_RENDER = {"render": 1, "evaluate": 1, "summary": 1, "all": 1}
AFTER_TRAIN = {"export": 1, **AFTER_RENDER}


@pytest.mark.parametrize("setting", [{"fps": 24.0}, {"video_format": "gif"}])
def test_a_render_setting_replans_render_and_what_reads_it(reference, tmp_path, setting):
    wd = copy_workdir(reference, tmp_path / "wd")
    edit_config(wd, "render", **setting)
    plan, out = dry_run(wd)
    # fps is a param of render; a new video_format is a new output file of render
    assert plan == AFTER_RENDER, out[-3000:]


@pytest.mark.parametrize("old_config", [False, True], ids=["render.chunk", "train.chunk"])
def test_the_inference_chunk_replans_what_renders_but_not_train(reference, tmp_path, old_config):
    """render.chunk is a param of render, evaluate and export, not of train; an old config's
    train.chunk is read as render.chunk (with a warning) and does not retrain either."""
    wd = copy_workdir(reference, tmp_path / "wd")
    if old_config:
        cfg = yaml.safe_load((wd / "config.yaml").read_text())
        del cfg["render"]["chunk"]
        cfg["train"]["chunk"] = 1024
        (wd / "config.yaml").write_text(yaml.safe_dump(cfg))
    else:
        edit_config(wd, "render", chunk=1024)
    plan, out = dry_run(wd)
    assert plan == {"export": 1, **AFTER_RENDER}, out[-3000:]
    # (evaluate reruns anyway: it reads the new render of split test)
    for rule in ("render", "export"):
        job = out.split(f"rule {rule}:")[1].split("\n\n")[0]
        assert "Params have changed since last execution" in job, job
    assert ("config key 'train.chunk' is deprecated" in out) == old_config, out[:3000]


def test_a_train_setting_replans_train_and_after_but_no_prior(reference, tmp_path):
    wd = copy_workdir(reference, tmp_path / "wd")
    edit_config(wd, "train", lr=1e-3)  # the tiny preset does not set lr
    plan, out = dry_run(wd)
    assert plan == {"train": 1, **AFTER_TRAIN}, out[-3000:]
    assert "Params have changed since last execution" in out.split("rule train:")[1]


def forget_output(wd: Path, output: str, consumers: tuple[str, ...]) -> None:
    """Make the results look as if rule ``output``'s rule had never existed: delete the file,
    its record in .snakemake/metadata (named by the urlsafe base64 of the path) and its place
    in the recorded inputs of ``consumers``' outputs."""
    import base64

    meta = wd / ".snakemake" / "metadata"

    def record(path: str) -> Path:
        return meta / base64.urlsafe_b64encode(path.encode()).decode()

    (wd / output).unlink()
    record(output).unlink()
    for path in consumers:
        rec = json.loads(record(path).read_text())
        rec["input"].remove(output)
        rec.get("input_checksums", {}).pop(output, None)
        record(path).write_text(json.dumps(rec))


@pytest.mark.parametrize("change", ["results_from_before", "lpips_fetch"])
def test_the_lpips_weights_replan_evaluate_but_no_prior_or_training(reference, tmp_path, change):
    """Results made before rule weights_evaluate existed (no marker, evaluate's recorded inputs
    without it), or a new eval.lpips_fetch, rerun the LPIPS marker, evaluate (it reads the
    marker) and the summary; rule weights and everything that reads its marker stay done."""
    wd = copy_workdir(reference, tmp_path / "wd")
    if change == "results_from_before":
        evaluate = ("results/tiny/eval/metrics.json", "results/tiny/eval/novel")
        forget_output(wd, "results/tiny/weights_evaluate.json", evaluate)
    else:
        edit_config(wd, "eval", lpips_fetch=True)
    plan, out = dry_run(wd)
    assert plan == {"weights_evaluate": 1, "evaluate": 1, "summary": 1, "all": 1}, out[-3000:]


def test_keep_intermediates_false_deletes_them_once_trained(tmp_path):
    """A whole run with the switch off: flow, disp and the COLMAP workspace are gone, every
    final output is there, and Snakemake plans nothing afterwards (it knows temp files were
    removed on purpose). A train change then recomputes them, a render change does not."""
    wd = new_workdir(tmp_path / "wd", keep_intermediates=False)
    r = snakemake(wd, "--cores", "2")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    res = wd / "results" / "tiny"
    gone = ("flow_fw", "flow_bw", "flow_ok", "disp", "sfm")
    for name in gone:
        assert not (res / name).exists(), name
        assert f"Removing temporary output results/tiny/{name}." in out
    for name in ("frames", "frames.json", "masks", "cameras.npz", "poses_bounds.npy"):
        assert (res / name).exists(), name
    for name in ("train/last.ckpt", "train/metrics.csv", "render/test.mp4", "eval/metrics.json"):
        assert (res / name).stat().st_size > 0, name
    assert pd.read_csv(wd / "results" / "summary.csv").loc[0, "status"] == "ok"

    plan, out = dry_run(wd)
    assert plan == {} and "Nothing to be done" in out

    again = copy_workdir(wd, tmp_path / "render_change")
    edit_config(again, "render", fps=24.0)
    assert dry_run(again)[0] == AFTER_RENDER  # render reads none of the intermediates
    edit_config(wd, "train", lr=1e-3)
    plan, out = dry_run(wd)
    # train needs the flow again; the recomputed flow is newer than masks, and so on down;
    # sfm_masks (its own flow at a fixed size) is kept, sfm reruns for its deleted workspace
    recomputed = {
        "flow",
        "masks",
        "sfm",
        "export_colmap",
        "depth",
        "diagnose",
        "train",
    }
    assert plan == {**dict.fromkeys(recomputed, 1), **AFTER_TRAIN}, out[-3000:]

"""The Snakemake workflow itself: lint, dry run, start-up validation, and a tiny end-to-end run
of the whole DAG (priors, training, render splits, evaluation, summary) on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from nsff_core.model import io
from nsff_core.model.metrics import iou

from .conftest import REPO

pytestmark = pytest.mark.workflow

SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(workdir: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the repository's Snakefile with ``workdir`` as working directory."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def make_workdir(tmp_path: Path, sheet: str, **overrides) -> Path:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["scenes"] = "scenes.tsv"
    for key, value in overrides.items():
        cfg[key].update(value) if isinstance(value, dict) else cfg.__setitem__(key, value)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    (tmp_path / "scenes.tsv").write_text(sheet)
    return tmp_path


def test_lint():
    r = subprocess.run(
        [*SNAKEMAKE, "--lint", "-s", str(REPO / "Snakefile"), "-d", str(REPO)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Congratulations" in r.stdout + r.stderr or "no issues" in (r.stdout + r.stderr).lower()


def test_dry_run_of_the_demo(tmp_path):
    wd = make_workdir(tmp_path, (REPO / "scenes.tsv").read_text())
    r = snakemake(wd, "-n", "--cores", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    for rule in ("synthetic", "frames", "flow", "masks", "sfm", "depth", "weights_evaluate"):
        assert rule in r.stdout


@pytest.mark.parametrize(
    "sheet, needle",
    [
        ("scene\tsource\na\tx.mp4\na\ty.mp4\n", "'a' appears more than once"),
        ("scene\tsource\tfps\na\tx.mp4\t30\n", "unknown column(s) ['fps']"),
        ("scene\tsource\na\tsynthetic:nope\n", "synthetic:nope"),
    ],
)
def test_bad_sheet_stops_before_any_job(tmp_path, sheet, needle):
    wd = make_workdir(tmp_path, sheet)
    r = snakemake(wd, "--cores", "1")
    assert r.returncode != 0
    assert needle in r.stdout + r.stderr
    assert not (wd / "results").exists()


def test_bad_config_key_stops_before_any_job(tmp_path):
    wd = make_workdir(tmp_path, "scene\tsource\na\tsynthetic:tiny\n", flow={"dis_preset": "slow"})
    r = snakemake(wd, "--cores", "1")
    assert r.returncode != 0
    assert "flow.dis_preset" in r.stdout + r.stderr
    assert not (wd / "results").exists()


def test_missing_source_names_scene_and_rule(tmp_path):
    wd = make_workdir(tmp_path, "scene\tsource\nghost\tvideos/nowhere.mp4\n")
    r = snakemake(wd, "--cores", "1", "results/ghost/frames.json")
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "scene 'ghost', rule 'frames'" in out and "nowhere.mp4" in out
    assert not (wd / "results" / "ghost" / "frames.json").exists()
    assert not (wd / "results" / "ghost" / "frames").exists()


#: a train preset small enough for a test (seconds on a CPU)
TINY_TRAIN = {
    "field": "planes",
    "grid_levels": 2,
    "grid_channels": 4,
    "grid_hidden": 16,
    "num_samples": 8,
    "batch_size": 256,
    "max_steps": 30,
    "checkpoint_every": 10,
    "log_every": 10,
}


def test_unknown_train_preset_or_split_stops_before_any_job(tmp_path):
    wd = make_workdir(tmp_path, "scene\tsource\ttrain_preset\na\tsynthetic:tiny\tnope\n")
    r = snakemake(wd, "--cores", "1")
    assert r.returncode != 0 and "train_preset 'nope'" in r.stdout + r.stderr
    wd = make_workdir(tmp_path, "scene\tsource\tsplits\na\tsynthetic:tiny\ttest,spiral\n")
    r = snakemake(wd, "--cores", "1")
    assert r.returncode != 0 and "'spiral'" in r.stdout + r.stderr
    assert not (wd / "results").exists()


def test_a_malformed_split_matches_no_rule(tmp_path):
    """The {split} wildcard is constrained to the split grammar (nsff_core.model.paths.SPLIT_PATTERN):
    a target whose split parse_split refuses (leading zero) is planned by no rule, rather
    than planned and failing inside the render job; a valid one is planned."""
    wd = make_workdir(tmp_path, "scene\tsource\ttrain_preset\na\tsynthetic:tiny\ttiny\n")
    r = snakemake(wd, "-n", "--cores", "1", "results/a/render/test_spiral01.mp4")
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "MissingRuleException" in out, out[-2000:]
    assert "results/a/render/test_spiral01.mp4" in out
    r = snakemake(wd, "-n", "--cores", "1", "results/a/render/test_spiral1.mp4")
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "split=test_spiral1" in out, out[-2000:]


@pytest.mark.stage
def test_tiny_end_to_end(tmp_path):
    """The demo command on a tiny synthetic scene: every output of every rule, in its format."""
    wd = make_workdir(
        tmp_path,
        "scene\tsource\ttrain_preset\tsplits\ntiny\tsynthetic:tiny\ttiny\ttest,test_fixview2_interp2\n",
        train_presets={"tiny": TINY_TRAIN},
    )
    r = snakemake(wd, "--cores", "2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = wd / "results" / "tiny"
    gt = np.load(res / "gt" / "scene.npz")
    n, h, w = gt["depth"].shape
    meta = json.loads((res / "frames.json").read_text())
    assert meta["count"] == n and meta["size"] == [w, h]
    assert len(io.list_frames(res / "frames")) == n
    assert len(list((res / "flow_fw").glob("*.flo"))) == n - 1
    assert io.read_flo(res / "flow_fw" / "00000.flo").shape == (h, w, 2)
    assert len(list((res / "flow_ok").glob("*.png"))) == 2 * (n - 1)
    masks = np.stack([io.read_mask(p) for p in io.list_frames(res / "masks")])
    assert masks.shape == (n, h, w)
    assert np.mean([iou(m, g) for m, g in zip(masks, gt["dynamic_mask"], strict=True)]) > 0.3
    cams = io.read_cameras(res / "cameras.npz")
    assert cams["c2w"].shape == (n, 4, 4) and cams["registered"].all()
    assert np.load(res / "poses_bounds.npy").shape == (n, 17)
    assert (res / "sfm" / "sparse" / "0" / "points3D.bin").exists()
    disp = [io.read_disparity(p) for p in sorted((res / "disp").glob("*.npy"))]
    assert len(disp) == n and disp[0].shape == (h, w) and disp[0].dtype == np.float32
    # training, the render splits, the evaluation and the summary
    steps = pd.read_csv(res / "train" / "metrics.csv")["step"].dropna()
    assert steps.max() == TINY_TRAIN["max_steps"] - 1
    assert json.loads((res / "train" / "config.json").read_text())["train"]["field"] == "planes"
    assert len(io.list_frames(res / "render" / "test")) == n
    assert len(io.list_frames(res / "render" / "test_fixview2_interp2")) == (n - 1) * 2 + 1
    for video in ("test", "test_depth", "test_static", "test_dynamic", "test_fixview2_interp2"):
        assert (res / "render" / f"{video}.mp4").stat().st_size > 0
    metrics = json.loads((res / "eval" / "metrics.json").read_text())
    summary = pd.read_csv(wd / "results" / "summary.csv")
    assert list(summary["scene"]) == ["tiny"]
    assert summary.loc[0, "psnr"] == pytest.approx(metrics["test"]["mean"]["psnr"], abs=1e-3)
    assert np.isfinite(summary.loc[0, "novel_psnr"]) and summary.loc[0, "status"] == "ok"
    rules = ("synthetic", "frames", "flow", "sfm_masks", "masks", "sfm", "depth", "train")
    for rule in (*rules, "weights_evaluate", "evaluate", "export_colmap", "export"):
        assert (res / "logs" / f"{rule}.log").stat().st_size > 0
    # the LPIPS weights (rule weights_evaluate): eval.lpips_fetch is off, so only what the
    # cache holds (usually nothing: LPIPS unavailable, and evaluate went on without it)
    lpips = json.loads((res / "weights_evaluate.json").read_text())
    assert lpips["download"] is False
    assert set(lpips["weights"]) | set(lpips["unavailable"]) == {"alexnet", "lpips_alex"}
    if len(lpips["weights"]) == 2:
        assert lpips["weights"]["alexnet"]["path"] in metrics["lpips_state"]
    # the exports are part of the default target (their formats: tests/test_export.py)
    ex = res / "export"
    assert (ex / "colmap" / "points3D.txt").is_file()
    meta = json.loads((ex / "transforms.json").read_text())
    assert len(meta["frames"]) == n and (ex / meta["frames"][0]["file_path"]).is_file()
    assert len(list((ex / "depth").glob("*.png"))) == n
    assert (ex / "points.ply").read_bytes().startswith(b"ply\nformat binary_little_endian 1.0\n")
    # a finished workflow has nothing left to do
    again = snakemake(wd, "-n", "--cores", "2")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_held_out_frames_end_to_end(tmp_path):
    """eval.holdout_every through Snakemake: flow between training frames, training without
    the held-out frames, their renders in the test split, their scores in metrics.json and
    summary.csv, and a bullet-time split at a fractional time."""
    wd = make_workdir(
        tmp_path,
        "scene\tsource\ttrain_preset\tsplits\tholdout_every\n"
        "tiny\tsynthetic:tiny\ttiny\ttest,bullet4.5\t3\n",
        train_presets={"tiny": TINY_TRAIN},
    )
    r = snakemake(wd, "--cores", "2")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = wd / "results" / "tiny"
    n = len(io.list_frames(res / "frames"))
    kept = [i for i in range(n) if i % 3 != 2 or i == n - 1]
    facts = json.loads((res / "flow_holdout" / "training_frames.json").read_text())
    assert facts["frame_ids"] == kept
    assert json.loads((res / "train" / "config.json").read_text())["num_frames"] == len(kept)
    assert len(io.list_frames(res / "render" / "test")) == n
    assert len(io.list_frames(res / "render" / "bullet4.5")) == 60
    holdout = json.loads((res / "eval" / "metrics.json").read_text())["holdout"]
    assert holdout["frames"] == n - len(kept)
    summary = pd.read_csv(wd / "results" / "summary.csv")
    assert summary.loc[0, "holdout_psnr"] == pytest.approx(holdout["mean"]["psnr"], abs=1e-3)
    assert np.isfinite(summary.loc[0, "holdout_baseline_psnr"])
    again = snakemake(wd, "-n", "--cores", "2")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_pretrained_backends_plan_the_weights_rule_and_a_gpu(tmp_path):
    sheet = "scene\tsource\tflow\tmasks\tdepth\na\tsynthetic:tiny\traft\tmaskrcnn\tdpt\n"
    wd = make_workdir(tmp_path, sheet)
    r = snakemake(wd, "-n", "--cores", "2", "results/a/masks", "-p")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "rule weights:" in out or "localrule weights:" in out
    for rule in ("flow", "sfm_masks", "masks", "depth"):
        block = out.split(f"rule {rule}:")[1].split("\n\n")[0]
        assert "gpu=1" in block, (rule, block)


def test_unknown_dynamic_class_stops_before_any_job(tmp_path):
    sheet = "scene\tsource\tmasks\tdynamic_classes\na\tsynthetic:tiny\tmaskrcnn\tperson,unicorn\n"
    wd = make_workdir(tmp_path, sheet)
    r = snakemake(wd, "--cores", "1")
    assert r.returncode != 0 and "unicorn" in r.stdout + r.stderr
    assert not (wd / "results").exists()


def test_a_failing_scene_is_marked_in_the_summary_and_the_others_go_on(tmp_path):
    sheet = "scene\tsource\ngood\tsynthetic:tiny\nbad\tvideos/nowhere.mp4\n"
    wd = make_workdir(tmp_path, sheet)
    r = snakemake(
        wd, "--cores", "2", "--keep-going", "results/good/frames.json", "results/bad/frames.json"
    )
    assert r.returncode != 0
    assert (wd / "results" / "good" / "frames.json").exists(), "the good scene went on"
    summary = pd.read_csv(wd / "results" / "summary.csv").set_index("scene")
    assert summary.loc["bad", "status"] == "failed"
    assert summary.loc["bad", "log"].endswith("results/bad/logs/frames.log")
    assert summary.loc["good", "status"] == "missing"  # not evaluated: that target was not asked


# --------------------------------------------------------------------------- failures of jobs

#: Runs one workflow script as Snakemake would, with a stand-in ``snakemake`` object, every
#: import of the library (but workflow, errors, gpu_slots) and of torch failing, and the GPU
#: claim spied on; prints the order of claims and imports as JSON.
SCRIPT_DRIVER = r"""
import importlib.abc, json, runpy, sys
from types import SimpleNamespace

script, log = sys.argv[1], sys.argv[2]
ALLOWED = {
    "nsff_core",
    "nsff_core.errors",
    "nsff_core.workflow",
    "nsff_core.workflow.stage",
    "nsff_core.workflow.gpu_slots",
}
events = []


class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or (name.startswith("nsff_core.") and name not in ALLOWED):
            events.append("import " + name)
            raise RuntimeError("injected import failure: " + name)
        return None


class Named(list):
    def __init__(self, **kw):
        super().__init__(kw.values())
        self.__dict__.update(kw)

    def get(self, key, default=None):
        return self.__dict__.get(key, default)


sys.meta_path.insert(0, Blocked())
from nsff_core.workflow import gpu_slots

claim = gpu_slots.claim_gpus


def spy(count, *args, **kwargs):
    events.append(f"claim {count}")
    return claim(count, *args, **kwargs)


gpu_slots.claim_gpus = spy
smk = SimpleNamespace(
    scriptdir=str(sys.argv[3]), rule=script.split("/")[-1][:-3], log=Named(log=log),
    wildcards=Named(scene="s"), resources=Named(gpu=1), input=Named(), output=Named(),
    params=Named(),
)
try:
    runpy.run_path(script, init_globals={"snakemake": smk}, run_name="__main__")
finally:
    print(json.dumps(events))
"""

SCRIPTS = sorted(p.name for p in (REPO / "workflow_scripts").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_fails_inside_run_stage_after_its_gpu_claim(tmp_path, script):
    """Whatever a script imports or calls fails inside run_stage: the traceback and the FAILED
    line reach the rule's log and the job exits 1; the GPU slot is claimed before anything
    heavier than the standard library is imported (so before torch)."""
    from nsff_core.workflow.report import job_outcome
    from nsff_core.workflow.stage import FAILED

    log = tmp_path / "rule.log"
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES",)}
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    env.update(
        PYTHONPATH=str(REPO),
        NSFF_GPU_DEVICES="0",
        NSFF_GPU_LOCK_DIR=str(tmp_path / "locks"),
    )
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT_DRIVER, str(REPO / "workflow_scripts" / script), str(log)]
        + [str(REPO / "workflow_scripts")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    events = json.loads(r.stdout.strip().splitlines()[-1])
    assert events[0] == "claim 1" and events[1].startswith("import "), events
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "injected import failure" in text
    assert job_outcome(log) == FAILED
    assert text.splitlines()[-1].endswith(f"{FAILED}: rule {script[:-3]}, scene s"), text


#: Test hook: NSFF_TEST_FAIL = "script|module|attribute" makes module.attribute raise a plain
#: RuntimeError in the process that runs workflow_scripts/<script>.py (not a StageError: what a
#: bug or a library crash looks like).
FAIL_HOOK = """\
import os
import signal
import sys

_spec = os.environ.get("NSFF_TEST_FAIL", "")
if _spec and sys.argv and sys.argv[0].endswith("." + _spec.split("|")[0] + ".py"):
    import importlib

    _script, _module, _attr = _spec.split("|")

    def _fail(*args, **kwargs):
        raise RuntimeError(f"injected failure in {_module}.{_attr}")

    setattr(importlib.import_module(_module), _attr, _fail)
"""

#: the files of a render split ``test`` (mp4) and of train, as an earlier run left them
OLD_RENDER = ["test.mp4", "test_depth.mp4", "test_static.mp4", "test_dynamic.mp4", "test"]
OLD_TRAIN = ["last.ckpt", "config.json", "metrics.csv"]


def earlier_run(tmp_path: Path) -> Path:
    """A workdir of scene ``tiny`` with the outputs of an earlier, finished run of train,
    render (split test) and evaluate, an hour old, and the inputs of train and render (stand-in
    files: the job under test fails before it reads them)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    wd = make_workdir(
        tmp_path,
        "scene\tsource\ttrain_preset\tsplits\ntiny\tsynthetic:tiny\ttiny\ttest\n",
        train_presets={"tiny": TINY_TRAIN},
    )
    res = wd / "results" / "tiny"
    for name in ("frames", "flow_fw", "flow_bw", "flow_ok", "sfm_masks", "masks", "sfm", "disp"):
        (res / name).mkdir(parents=True)
        (res / name / "00000.x").write_bytes(b"input")
    (res / "cameras.npz").write_bytes(b"input")
    (res / "diagnostics").mkdir()
    (res / "diagnostics" / "diagnostics.json").write_text('{"failed": []}')
    for name in OLD_TRAIN:
        (res / "train").mkdir(exist_ok=True)
        (res / "train" / name).write_bytes(b"old model")
    (res / "render" / "test").mkdir(parents=True)
    (res / "render" / "test" / "00000.png").write_bytes(b"old frame")
    for name in OLD_RENDER[:4]:
        (res / "render" / name).write_bytes(b"old video")
    (res / "eval").mkdir()
    metrics = {"frames": 12, "test": {"mean": {"psnr": 31.0}}, "lpips_state": "ok"}
    (res / "eval" / "metrics.json").write_text(json.dumps(metrics))
    (res / "logs").mkdir()
    for rule in ("train", "render_test", "evaluate"):
        (res / "logs" / f"{rule}.log").write_text(
            f"12:00:00 INFO nsff.{rule.split('_')[0]}: FINISHED: rule {rule}, scene tiny\n"
        )
    hour_ago = time.time() - 3600
    for p in res.rglob("*"):
        os.utime(p, (hour_ago, hour_ago))
    return wd


@pytest.mark.parametrize(
    "rule, target, fail, old",
    [
        ("train", "train/last.ckpt", "nsff_core.workflow.stages.train|train_scene", OLD_TRAIN),
        (
            "render",
            "render/test.mp4",
            "nsff_core.workflow.stages.render_split|render_split",
            OLD_RENDER,
        ),
    ],
)
def test_a_crashing_job_logs_its_traceback_removes_its_outputs_and_fails_the_scene(
    tmp_path, rule, target, fail, old
):
    """A plain exception in the library (not a StageError) while retraining or re-rendering
    a scene evaluated before: the traceback and FAILED are in the rule's log, Snakemake fails,
    no output of the earlier run is left (render: the side videos too, as every one is
    declared), and the summary written on error marks the scene failed despite its old
    eval/metrics.json."""
    from nsff_core.workflow.report import job_outcome

    wd = earlier_run(tmp_path / "wd")
    res = wd / "results" / "tiny"
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(FAIL_HOOK)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(tmp_path / "hook"), str(REPO)]),
        NSFF_TEST_FAIL=f"{rule}|{fail}",
    )
    # --allowed-rules and --forcerun take several values: the target goes first
    args = [f"results/tiny/{target}", "--cores", "1", "--allowed-rules", rule, "--forcerun", rule]
    r = subprocess.run(
        [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(wd), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode != 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = res / "logs" / ("render_test.log" if rule == "render" else "train.log")
    text = log.read_text()
    assert "Traceback (most recent call last)" in text, text
    assert f"RuntimeError: injected failure in {fail.replace('|', '.')}" in text
    assert job_outcome(log) == "FAILED"
    folder = res / target.split("/")[0]
    assert [name for name in old if (folder / name).exists()] == []
    summary = pd.read_csv(wd / "results" / "summary.csv").set_index("scene")
    assert summary.loc["tiny", "status"] == "failed"
    assert summary.loc["tiny", "log"] == f"results/tiny/logs/{log.name}"
    assert np.isnan(summary.loc["tiny", "psnr"])  # not the old model's score


def test_a_killed_render_leaves_no_video_of_the_earlier_model(tmp_path):
    """SIGKILL of Snakemake and its render job (re-rendering after retraining): Snakemake
    deleted every declared output when the job started, so no video of the earlier model is
    left beside the new checkpoint; the summary says the scene is incomplete and names the
    render log, which has no end line."""
    from .test_resume import STALL_HOOK

    wd = earlier_run(tmp_path / "wd")
    res = wd / "results" / "tiny"
    (res / "train" / "last.ckpt").write_bytes(b"new model")  # newer than the renders
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(STALL_HOOK)
    flag = tmp_path / "stalled.pid"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(tmp_path / "hook"), str(REPO)]),
        NSFF_TEST_STALL=f"render|nsff_core.workflow.stages.render_split|render_split|1|{flag}",
    )
    args = ["results/tiny/render/test.mp4", "--cores", "1", "--allowed-rules", "render"]
    with open(tmp_path / "run.log", "w") as out:
        p = subprocess.Popen(
            [*SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(wd), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 300
        while not flag.exists():
            assert p.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()[-3000:]
            time.sleep(0.05)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert [name for name in OLD_RENDER if (res / "render" / name).exists()] == []
    r = subprocess.run(
        [sys.executable, "-m", "nsff_core.workflow.report", "results/summary.csv", "tiny"],
        cwd=wd,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert r.returncode == 0, r.stderr
    row = pd.read_csv(wd / "results" / "summary.csv").iloc[0]
    assert row["status"] == "incomplete" and row["log"] == "results/tiny/logs/render_test.log"

"""The Snakemake workflow itself: lint, dry run, start-up validation, and a tiny end-to-end run
of the whole DAG (priors, training, render splits, evaluation, summary) on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from nsff_core import io
from nsff_core.metrics import iou

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
    for rule in ("synthetic", "frames", "flow", "masks", "sfm", "depth"):
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
    for rule in ("synthetic", "frames", "flow", "masks", "sfm", "depth", "train", "evaluate"):
        assert (res / "logs" / f"{rule}.log").stat().st_size > 0
    # a finished workflow has nothing left to do
    again = snakemake(wd, "-n", "--cores", "2")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr


def test_pretrained_backends_plan_the_weights_rule_and_a_gpu(tmp_path):
    sheet = "scene\tsource\tflow\tmasks\tdepth\na\tsynthetic:tiny\traft\tmaskrcnn\tdpt\n"
    wd = make_workdir(tmp_path, sheet)
    r = snakemake(wd, "-n", "--cores", "2", "results/a/disp", "-p")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "rule weights:" in out or "localrule weights:" in out
    for rule in ("flow", "masks", "depth"):
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

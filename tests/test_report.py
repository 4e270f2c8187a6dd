"""results/summary.csv (nsff_core.workflow.report): one row per scene, its status from the end lines of
the scene's job logs and the file times, on fabricated scene folders."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from nsff_core.workflow.report import COLUMNS, job_outcome, scene_status, write_summary
from nsff_core.workflow.stage import FAILED, FINISHED, run_stage

#: a fixed time base for the fabricated files (seconds since the epoch)
T0 = time.time() - 10_000


def _fake_eval(path: Path, psnr: float, novel: bool = False, at: float = T0) -> None:
    """An eval/metrics.json with the fields the summary reads, with mtime ``at``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mean = {"psnr": psnr, "ssim": 0.8, "lpips": None, "psnr_dynamic": psnr - 3}
    mean.update(ssim_dynamic=0.6, lpips_dynamic=None)
    m = {"frames": 4, "lpips_state": "unavailable: no weights", "test": {"mean": mean}}
    if novel:
        m["novel"] = {
            "views": 1,
            "mean": {"psnr": psnr - 5, "ssim": 0.7, "lpips": None},
            "baseline": {"mean": {"psnr": 15.0, "ssim": 0.4, "lpips": None}},
            "alignment": {"centre_rms_pct_path": 0.5},
        }
    path.write_text(json.dumps(m))
    os.utime(path, (at, at))


def _job_log(scene_dir: Path, rule: str, outcome: str | None, at: float, split: str = "") -> Path:
    """A job log as run_stage writes it (see test_end_lines_are_what_run_stage_writes), ending
    with ``outcome`` (None: cut short), with mtime ``at``."""
    name = f"{rule}_{split}" if split else rule
    path = scene_dir / "logs" / f"{name}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"12:00:00 INFO nsff.{rule}: rule {rule}, scene {scene_dir.name}"]
    lines.append(f"12:00:01 INFO nsff.{rule}: working")
    if outcome == FAILED:
        lines += [
            f"12:00:02 ERROR nsff.{rule}: unexpected error in rule {rule}, scene {scene_dir.name}",
            "Traceback (most recent call last):",
            "RuntimeError: boom",
        ]
    if outcome is not None:
        level = "INFO" if outcome == FINISHED else "ERROR"
        lines.append(
            f"12:00:03 {level} nsff.{rule}: {outcome}: rule {rule}, scene {scene_dir.name}"
        )
    path.write_text("\n".join(lines) + "\n")
    os.utime(path, (at, at))
    return path


def _finished_run(scene_dir: Path, psnr: float = 30.0) -> None:
    """A scene whose every job finished, in order: priors, train, render, evaluate."""
    for k, rule in enumerate(("synthetic", "frames", "flow", "masks", "sfm", "depth", "train")):
        _job_log(scene_dir, rule, FINISHED, T0 + k)
    _job_log(scene_dir, "render", FINISHED, T0 + 10, split="test")
    _fake_eval(scene_dir / "eval" / "metrics.json", psnr, novel=True, at=T0 + 20)
    _job_log(scene_dir, "evaluate", FINISHED, T0 + 21)


@pytest.fixture()
def restore_logging():
    """run_stage configures the root logger: put back pytest's handlers afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers[:]:
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)


@pytest.mark.parametrize("fail", [False, True])
def test_end_lines_are_what_run_stage_writes(tmp_path, restore_logging, fail):
    """job_outcome reads the end lines run_stage writes (and _job_log imitates)."""
    log = tmp_path / "train.log"
    smk = SimpleNamespace(
        log=[str(log)], rule="train", wildcards=SimpleNamespace(scene="a"), resources={}
    )
    with pytest.raises(SystemExit) if fail else contextlib.nullcontext():
        with run_stage(smk):
            if fail:
                raise RuntimeError("boom")
    assert job_outcome(log) == (FAILED if fail else FINISHED)
    fake = _job_log(tmp_path / "a", "train", FAILED if fail else FINISHED, T0)
    assert log.read_text().splitlines()[-1][8:] == fake.read_text().splitlines()[-1][8:]


def _smk(log: Path, rule: str = "train", gpu: int = 0) -> SimpleNamespace:
    """The parts of a script's ``snakemake`` object that run_stage reads."""
    return SimpleNamespace(
        log=[str(log)], rule=rule, wildcards=SimpleNamespace(scene="a"), resources={"gpu": gpu}
    )


def test_run_stage_logs_the_traceback_of_a_plain_exception(tmp_path, restore_logging):
    log = tmp_path / "train.log"
    with pytest.raises(SystemExit) as exit_:
        with run_stage(_smk(log)):
            raise ZeroDivisionError("division by zero in a library")
    assert exit_.value.code == 1
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "ZeroDivisionError: division" in text
    assert text.splitlines()[-1].endswith("FAILED: rule train, scene a")
    logging.getLogger("nsff.train").error("logged at exit by some library")
    assert log.read_text() == text  # the end line stays the last line


def test_run_stage_exit_and_gpu_errors(tmp_path, restore_logging, monkeypatch):
    log = tmp_path / "render.log"
    with pytest.raises(SystemExit) as exit_:
        with run_stage(_smk(log, "render")):
            sys.exit(3)
    assert exit_.value.code == 3 and job_outcome(log) == FAILED
    # more GPU slots than configured: a short message naming scene and rule, then FAILED
    for var in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NSFF_GPU_DEVICES", "0")
    monkeypatch.setenv("NSFF_GPU_LOCK_DIR", str(tmp_path / "locks"))
    with pytest.raises(SystemExit):
        with run_stage(_smk(log, "render", gpu=2)):
            raise AssertionError("the body must not run without its GPUs")
    text = log.read_text()
    assert "[scene 'a', rule 'render'] GPU slots: the job asks for 2 GPUs" in text
    assert job_outcome(log) == FAILED


def test_job_outcome_of_a_cut_short_or_missing_log(tmp_path):
    res = tmp_path / "s"
    assert job_outcome(_job_log(res, "train", None, T0)) is None
    assert job_outcome(tmp_path / "nope.log") is None
    # only run_stage's own end line counts, not the word anywhere in a message
    (tmp_path / "x.log").write_text("12:00:00 INFO nsff.train: step 3 FAILED to converge\n")
    assert job_outcome(tmp_path / "x.log") is None


def _row(res: Path, scene: str, **kw) -> pd.Series:
    write_summary([scene], res / "summary.csv", res, **kw)
    return pd.read_csv(res / "summary.csv").iloc[0]


def test_every_job_finished_is_ok(tmp_path):
    _finished_run(tmp_path / "a")
    row = _row(tmp_path, "a")
    assert row["status"] == "ok" and row["psnr"] == 30.0 and row["novel_psnr"] == 25.0
    assert row["log"] == str(tmp_path / "a" / "logs" / "evaluate.log")


def test_failed_retraining_with_an_old_evaluation_is_failed(tmp_path):
    """The newest train job failed (any exception: run_stage writes FAILED); the metrics of
    the earlier model are still on disk but neither count nor show."""
    scene = tmp_path / "a"
    _finished_run(scene)
    _job_log(scene, "train", FAILED, T0 + 100)
    row = _row(tmp_path, "a")
    assert row["status"] == "failed" and row["log"] == str(scene / "logs" / "train.log")
    assert np.isnan(row["psnr"]) and np.isnan(row["novel_psnr"]) and pd.isna(row["frames"])
    assert row["eval"] == str(scene / "eval" / "metrics.json")


def test_a_failed_render_fails_the_scene_even_after_a_later_evaluation(tmp_path):
    """--keep-going: a render split that evaluate does not read failed, evaluate went on."""
    scene = tmp_path / "a"
    _finished_run(scene)
    log = _job_log(scene, "render", FAILED, T0 + 15, split="test_fixview2_interp2")
    row = _row(tmp_path, "a")
    assert row["status"] == "failed" and row["log"] == str(log)


def test_a_split_no_longer_rendered_is_not_counted(tmp_path):
    scene = tmp_path / "a"
    _finished_run(scene)
    _job_log(scene, "render", FAILED, T0 + 15, split="path_old")
    assert _row(tmp_path, "a", splits={"a": ["test"]})["status"] == "ok"
    assert _row(tmp_path, "a")["status"] == "failed"  # every render log counts without splits


@pytest.mark.parametrize("rule, split", [("train", ""), ("render", "test"), ("masks", "")])
def test_a_job_killed_after_the_evaluation_is_incomplete(tmp_path, rule, split):
    """A log without an end line, newer than eval/metrics.json: killed (or still running)."""
    scene = tmp_path / "a"
    _finished_run(scene)
    log = _job_log(scene, rule, None, T0 + 100, split=split)
    row = _row(tmp_path, "a")
    assert row["status"] == "incomplete" and row["log"] == str(log)
    assert np.isnan(row["psnr"])


def test_logs_without_end_line_before_the_evaluation_do_not_count(tmp_path):
    """Logs of earlier versions (no end lines) of a finished scene: the evaluate log is newer
    than metrics.json (it logs after writing it), the others older."""
    scene = tmp_path / "a"
    for k, rule in enumerate(("frames", "train")):
        _job_log(scene, rule, None, T0 + k)
    _job_log(scene, "render", None, T0 + 5, split="test")
    _fake_eval(scene / "eval" / "metrics.json", 28.0, at=T0 + 10)
    _job_log(scene, "evaluate", None, T0 + 11)
    assert _row(tmp_path, "a")["status"] == "ok"


def test_killed_before_any_evaluation_is_incomplete(tmp_path):
    scene = tmp_path / "a"
    _job_log(scene, "frames", FINISHED, T0)
    log = _job_log(scene, "train", None, T0 + 5)
    assert scene_status(scene) == ("incomplete", str(log))


def test_not_run_or_not_evaluated_yet_is_missing(tmp_path):
    assert scene_status(tmp_path / "never") == ("missing", "")
    scene = tmp_path / "priors_only"
    _job_log(scene, "frames", FINISHED, T0)
    log = _job_log(scene, "flow", FINISHED, T0 + 1)
    assert scene_status(scene) == ("missing", str(log))
    row = _row(tmp_path, "never")
    assert row["status"] == "missing" and pd.isna(row["log"])


def test_summary_one_row_per_scene(tmp_path):
    res = tmp_path / "results"
    _fake_eval(res / "a" / "eval" / "metrics.json", 30.0, novel=True)
    _fake_eval(res / "b" / "eval" / "metrics.json", 25.0, novel=False)
    (res / "a" / "train").mkdir()
    pd.DataFrame({"step": [0, 1, 2, 2], "train/psnr": [10.0, 12.0, np.nan, 14.0]}).to_csv(
        res / "a" / "train" / "metrics.csv", index=False
    )
    (res / "a" / "benchmarks").mkdir()
    (res / "a" / "benchmarks" / "train.tsv").write_text("s\th:m:s\n390.5\t0:06:30\n")
    _job_log(res / "c", "evaluate", FAILED, T0)
    (res / "d").mkdir()
    (res / "e" / "eval").mkdir(parents=True)
    (res / "e" / "eval" / "metrics.json").write_text("{not json")

    out = res / "summary.csv"
    write_summary(["a", "b", "c", "d", "e"], out, res)
    df = pd.read_csv(out)
    assert list(df.columns) == list(COLUMNS)
    assert df["scene"].tolist() == ["a", "b", "c", "d", "e"]
    assert df["status"].tolist() == ["ok", "ok", "failed", "missing", "unreadable"]
    a, b, c = (df.iloc[i] for i in range(3))
    assert a["psnr"] == 30.0 and a["novel_psnr"] == 25.0 and a["baseline_psnr"] == 15.0
    assert a["train_psnr"] == 14.0 and a["train_steps"] == 3 and a["train_seconds"] == 390.5
    assert np.isnan(a["lpips"]) and a["lpips_state"] == "unavailable" and a["frames"] == 4
    assert np.isnan(b["novel_psnr"]) and np.isnan(b["train_psnr"]) and b["psnr_dynamic"] == 22
    assert c["log"] == str(res / "c" / "logs" / "evaluate.log") and np.isnan(c["psnr"])


# --------------------------------------------------------------------------- warnings column


def _diagnostics(scene_dir: Path, failed) -> None:
    """A diagnostics/diagnostics.json as rule diagnose writes it (the fields the summary
    reads)."""
    path = scene_dir / "diagnostics" / "diagnostics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"scene": scene_dir.name, "failed": failed, "checks": {}}))


def test_warnings_column_lists_the_failed_checks(tmp_path):
    """The failed checks of rule diagnose, joined by ';', whatever the status; empty when none
    failed, when the checks have not run, or when their file is unreadable."""
    _finished_run(tmp_path / "warned")
    _diagnostics(tmp_path / "warned", ["fov", "masks_small"])
    _finished_run(tmp_path / "clean")
    _diagnostics(tmp_path / "clean", [])
    _finished_run(tmp_path / "unchecked")
    _job_log(tmp_path / "failed", "train", FAILED, T0)
    _diagnostics(tmp_path / "failed", ["flow_consistency"])
    _finished_run(tmp_path / "garbled")
    (tmp_path / "garbled" / "diagnostics").mkdir()
    (tmp_path / "garbled" / "diagnostics" / "diagnostics.json").write_text("{not json")
    scenes = ["warned", "clean", "unchecked", "failed", "garbled"]
    write_summary(scenes, tmp_path / "summary.csv", tmp_path)
    df = pd.read_csv(tmp_path / "summary.csv", keep_default_na=False).set_index("scene")
    assert list(df.columns) == list(COLUMNS)[1:] and "warnings" in COLUMNS
    assert df["warnings"].to_dict() == {
        "warned": "fov;masks_small",
        "clean": "",
        "unchecked": "",
        "failed": "flow_consistency",
        "garbled": "",
    }
    assert df.loc["warned", "status"] == "ok" and df.loc["failed", "status"] == "failed"

"""`snakemake --report`: the items the summary job writes (nsff_core/workflow/report_page.py) and the
page Snakemake builds from them, after a tiny batch in which one scene went through and one
failed."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nsff_core.model import io
from nsff_core.workflow.report_page import SECTIONS, write_report_items

from .test_workflow import TINY_TRAIN, make_workdir, snakemake

# --------------------------------------------------------------------------- items, no pipeline


def _failed_scene(root: Path) -> tuple[dict, Path]:
    """A scene whose train job failed after its priors: a log with a traceback, a partial
    metrics.csv and the diagnose images, no render and no evaluation."""
    d = root / "results" / "broken"
    (d / "logs").mkdir(parents=True)
    log = d / "logs" / "train.log"
    log.write_text(
        "12:00:00 INFO nsff.train: rule train, scene broken\n"
        "Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory\n"
        "12:00:05 ERROR nsff.train: FAILED: rule train, scene broken\n"
    )
    (d / "train").mkdir()
    steps = np.arange(5)
    pd.DataFrame(
        {
            "step": steps,
            "loss/total": 1.0 / (steps + 1),
            "loss/color": 0.5 / (steps + 1),
            "train/psnr": 10.0 + steps,
        }
    ).to_csv(d / "train" / "metrics.csv", index=False)
    (d / "diagnostics").mkdir()
    io.write_image(d / "diagnostics" / "contact_sheet.png", np.zeros((8, 8, 3), np.uint8))
    row = {"scene": "broken", "status": "failed", "warnings": "fov", "log": str(log)}
    return row, d


def test_items_of_a_failed_scene_show_its_status_and_log(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    row, _ = _failed_scene(tmp_path)
    out = {s: tmp_path / "results" / "report" / s for s in SECTIONS}
    write_report_items([row], out, tmp_path / "results", splits={"broken": ["test"]})
    status = (out["status"] / "broken" / "status.html").read_text()
    assert "failed" in status and "CUDA out of memory" in status and "logs/train.log" in status
    assert "fov" in status  # the failed checks of the priors
    summary = (out["summary"] / "summary.html").read_text()
    assert "broken" in summary and "failed" in summary
    # what the scene has is shown, what it lacks is left out (no empty item)
    assert (out["priors"] / "broken" / "contact_sheet.png").is_file()
    curves = io.read_image(out["training"] / "broken" / "curves.png")
    assert curves.shape[0] > 100 and curves.std() > 0
    assert not (out["renders"] / "broken").exists()
    assert not (out["evaluation"] / "broken").exists()


def test_items_replace_the_folders_of_an_earlier_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    row, _ = _failed_scene(tmp_path)
    out = {s: tmp_path / "report" / s for s in SECTIONS}
    (out["renders"] / "gone").mkdir(parents=True)
    (out["renders"] / "gone" / "test.html").write_text("an earlier scene")
    write_report_items([row], out, tmp_path / "results")
    assert not (out["renders"] / "gone").exists()
    assert [p.name for p in (tmp_path / "report").iterdir() if p.name.startswith(".")] == []


# --------------------------------------------------------------------------- the whole page


def _results(page: str) -> dict:
    """The report's items: path -> {name, mime_type, data_uri, ...} (its ``results`` script)."""
    m = re.search(r"var results = (\{.*?\});\n", page, re.S)
    assert m, "no results in the report"
    return json.loads(m.group(1))


def _categories(page: str) -> dict:
    m = re.search(r"var categories = (\{.*?\});\n", page, re.S)
    assert m, "no categories in the report"
    return json.loads(m.group(1))


def _decode(uri: str) -> bytes:
    return base64.b64decode(uri.split("base64,", 1)[1])


@pytest.fixture(scope="module")
def batch_report(tmp_path_factory):
    """A tiny batch run with --keep-going (scene ``tiny`` goes through, scene ``bad`` has no
    source), then `snakemake --report report.html`."""
    wd = make_workdir(
        tmp_path_factory.mktemp("report"),
        "scene\tsource\ttrain_preset\tsplits\n"
        "tiny\tsynthetic:tiny\ttiny\ttest\n"
        "bad\tvideos/nowhere.mp4\t\t\n",
        train_presets={"tiny": TINY_TRAIN},
    )
    run = snakemake(wd, "--cores", "2", "--keep-going")
    assert run.returncode != 0, "scene bad must fail"
    assert (wd / "results" / "tiny" / "eval" / "metrics.json").is_file(), run.stderr[-3000:]
    r = snakemake(wd, "--report", "report.html", timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    keep = os.environ.get("NSFF_REPORT_COPY")  # CI opens the page in a browser (.ci/run)
    if keep:
        Path(keep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(wd / "report.html", keep)
    return wd, (wd / "report.html").read_text()


@pytest.mark.workflow
@pytest.mark.stage
def test_report_holds_videos_plots_and_metrics(batch_report):
    wd, page = batch_report
    res = wd / "results" / "tiny"
    items = _results(page)
    assert {"tiny", "bad", "Batch"} <= set(_categories(page))
    # the render split: its four videos, byte for byte, inside one self-contained item
    render = items["results/report/renders/tiny/test.html"]
    assert render["mime_type"] == "text/html"
    html = _decode(render["data_uri"]).decode()
    videos = re.findall(r"src='data:video/mp4;base64,([^']+)'", html)
    expected = [res / "render" / f"test{s}.mp4" for s in ("", "_depth", "_static", "_dynamic")]
    assert [base64.b64decode(v) for v in videos] == [p.read_bytes() for p in expected]
    # plots: the training curves and the priors' images decode as images
    curves = items["results/report/training/tiny/curves.png"]
    assert curves["mime_type"] == "image/png"
    path = wd / "curves_from_report.png"
    path.write_bytes(_decode(curves["data_uri"]))
    assert io.read_image(path).std() > 0
    for name in ("contact_sheet", "camera_path", "per_frame", "depth_vs_sfm"):
        assert items[f"results/report/priors/tiny/{name}.png"]["mime_type"] == "image/png"
    # the metrics: the test split's PSNR of eval/metrics.json in the evaluation table
    metrics = json.loads((res / "eval" / "metrics.json").read_text())
    table = _decode(items["results/report/evaluation/tiny/metrics.html"]["data_uri"]).decode()
    assert f"<td>{metrics['test']['mean']['psnr']:.4g}</td>" in table
    assert "results/report/evaluation/tiny/views.png" in items  # held-out views beside truth
    # the batch: summary.csv itself and as a table
    csv = _decode(items["results/summary.csv"]["data_uri"]).decode()
    assert csv == (wd / "results" / "summary.csv").read_text()
    assert "tiny" in _decode(items["results/report/summary/summary.html"]["data_uri"]).decode()


@pytest.mark.workflow
@pytest.mark.stage
def test_report_shows_the_failed_scene_with_its_log(batch_report):
    wd, page = batch_report
    items = _results(page)
    summary = pd.read_csv(wd / "results" / "summary.csv").set_index("scene")
    assert summary.loc["bad", "status"] == "failed"
    status = _decode(items["results/report/status/bad/status.html"]["data_uri"]).decode()
    assert "failed" in status and "logs/frames.log" in status
    assert "nowhere.mp4" in status  # the error of the frames rule, from the log's end
    assert not [p for p in items if "/bad/" in p and "/status/" not in p]
    ok = _decode(items["results/report/status/tiny/status.html"]["data_uri"]).decode()
    assert ">ok<" in ok

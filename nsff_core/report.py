"""The per-scene summary table ``results/summary.csv`` (rule ``summary``).

One row per scene, from ``results/{scene}/eval/metrics.json`` (rule ``evaluate``), the last
logged training PSNR and step of ``train/metrics.csv`` and the wall time in
``benchmarks/train.tsv``. A scene without ``eval/metrics.json`` still gets a row: status
``failed`` when one of its logs records an error (its ``log`` column names that log) or its
evaluate log exists, else ``missing`` (not run yet; ``log`` = its newest log). When a run
stops on an error, the workflow's ``onerror`` handler writes the table anyway, so a batch run
with ``--keep-going`` ends with a row per scene. By hand:
``python -m nsff_core.report results/summary.csv scene_a scene_b ...``.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

from . import io

log = logging.getLogger(__name__)

#: Columns of summary.csv, in order.
COLUMNS = (
    "scene",
    "status",
    "frames",
    "psnr",
    "ssim",
    "lpips",
    "psnr_dynamic",
    "ssim_dynamic",
    "lpips_dynamic",
    "novel_psnr",
    "novel_ssim",
    "novel_lpips",
    "baseline_psnr",
    "baseline_ssim",
    "align_rms_pct",
    "train_psnr",
    "train_steps",
    "train_seconds",
    "lpips_state",
    "eval",
    "log",
)


def _num(value) -> float:
    return math.nan if value is None else float(value)


def _eval_fields(metrics: dict) -> dict:
    mean = metrics["test"]["mean"]
    row = {
        "frames": metrics.get("frames"),
        **{k: _num(mean.get(k)) for k in ("psnr", "ssim", "lpips")},
        **{f"{k}_dynamic": _num(mean.get(f"{k}_dynamic")) for k in ("psnr", "ssim", "lpips")},
        "lpips_state": str(metrics.get("lpips_state", "")).split(":")[0],
    }
    novel = metrics.get("novel") or {}
    if novel.get("views"):
        for k in ("psnr", "ssim", "lpips"):
            row[f"novel_{k}"] = _num(novel["mean"].get(k))
        for k in ("psnr", "ssim"):
            row[f"baseline_{k}"] = _num(novel["baseline"]["mean"].get(k))
        row["align_rms_pct"] = _num(novel["alignment"].get("centre_rms_pct_path"))
    return row


def _train_fields(scene_dir: Path) -> dict:
    import pandas as pd

    row = {}
    metrics = scene_dir / "train" / "metrics.csv"
    if metrics.is_file():
        df = pd.read_csv(metrics)
        if "train/psnr" in df:
            psnr = df["train/psnr"].dropna()
            row["train_psnr"] = float(psnr.iloc[-1]) if len(psnr) else math.nan
        if "step" in df and df["step"].notna().any():
            row["train_steps"] = int(df["step"].max()) + 1
    bench = scene_dir / "benchmarks" / "train.tsv"
    if bench.is_file():
        b = pd.read_csv(bench, sep="\t")
        if "s" in b and len(b):
            row["train_seconds"] = float(b["s"].mean())  # mean over --benchmark-repeats
    return row


def _latest_log(scene_dir: Path) -> str:
    logs = sorted((scene_dir / "logs").glob("*.log"), key=lambda p: p.stat().st_mtime)
    return str(logs[-1]) if logs else ""


def _failed_log(scene_dir: Path) -> str:
    """The newest log of the scene that records an error (our ERROR lines or a traceback)."""
    logs = sorted((scene_dir / "logs").glob("*.log"), key=lambda p: p.stat().st_mtime)
    for path in reversed(logs):
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if " ERROR " in text or "Traceback (most recent call last)" in text:
            return str(path)
    return ""


def summary_row(scene: str, results_dir: str | Path = "results") -> dict:
    """The summary row of one scene (see the module docstring)."""
    scene_dir = Path(results_dir) / scene
    eval_json = scene_dir / "eval" / "metrics.json"
    eval_log = scene_dir / "logs" / "evaluate.log"
    row: dict = {"scene": scene, "eval": str(eval_json)}
    if eval_json.is_file():
        try:
            row.update(_eval_fields(json.loads(eval_json.read_text())))
            row["status"] = "ok"
            row["log"] = str(eval_log) if eval_log.is_file() else ""
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("summary: %s is unreadable (%s)", eval_json, exc)
            row["status"] = "unreadable"
            row["log"] = str(eval_log)
    elif failed := _failed_log(scene_dir):
        row["status"] = "failed"
        row["log"] = failed
    elif eval_log.is_file():
        row["status"] = "failed"
        row["log"] = str(eval_log)
    else:
        row["status"] = "missing"
        row["log"] = _latest_log(scene_dir)
    row.update(_train_fields(scene_dir))
    return row


def write_summary(
    scenes: list[str], out_csv: str | Path, results_dir: str | Path = "results"
) -> list[dict]:
    """Write ``out_csv`` with one row per scene (in the given order); returns the rows."""
    import pandas as pd

    rows = [summary_row(s, results_dir) for s in scenes]
    df = pd.DataFrame(rows).reindex(columns=list(COLUMNS))
    df["frames"] = df["frames"].astype("Int64")
    df["train_steps"] = df["train_steps"].astype("Int64")
    with io.atomic_file(out_csv) as tmp:
        df.to_csv(tmp, index=False, float_format="%.6g")
    for r in rows:
        log.info(
            "summary: %s %s psnr %s novel %s",
            r["scene"],
            r["status"],
            r.get("psnr", "-"),
            r.get("novel_psnr", "-"),
        )
    bad = [r["scene"] for r in rows if r["status"] != "ok"]
    if bad:
        log.warning("summary: no evaluation for %s (see the log column)", ", ".join(bad))
    log.info("summary: wrote %s (%d scenes)", out_csv, len(rows))
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(sys.argv) < 3:
        sys.exit("usage: python -m nsff_core.report OUT_CSV SCENE [SCENE ...]")
    write_summary(sys.argv[2:], sys.argv[1])

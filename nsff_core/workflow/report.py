"""The per-scene summary table ``results/summary.csv`` (rule ``summary``).

One row per scene, from ``results/{scene}/eval/metrics.json`` (rule ``evaluate``), the last
logged training PSNR and step of ``train/metrics.csv``, the wall time in
``benchmarks/train.tsv``, and the job logs ``logs/<rule>.log``.

**Status.** Each job of a rule overwrites that rule's log, and
:func:`nsff_core.workflow.stage.run_stage` ends the log with a ``FINISHED`` or a ``FAILED`` line, or
with neither when the job was killed (SIGKILL, out of memory or time) or is still running. The
first of these rules that applies gives the scene's status:

1. ``failed``: the newest job of one of the scene's rules ended ``FAILED``, whatever older
   outputs exist (a scene whose retraining or render failed is ``failed`` even beside an
   ``eval/metrics.json`` of an earlier model).
2. ``incomplete``: a log without an end line that is newer than ``eval/metrics.json``, or any
   such log when there is no ``eval/metrics.json``: a job cut short after the last evaluation.
   The evaluate log does not count while ``eval/metrics.json`` exists: Snakemake deletes that
   file when an evaluate job starts, so it comes from the newest evaluate job.
3. ``ok``: ``eval/metrics.json`` exists and reads (``unreadable`` when it does not).
4. ``missing``: not evaluated yet, and no job of the scene failed or was cut short (a scene
   that never ran included).

**Warnings.** The ``warnings`` column lists the checks of the scene's priors that failed
(rule ``diagnose``; short names such as ``fov`` or ``masks_small``, joined by ``;``), read from
``diagnostics/diagnostics.json``: empty when every check passed or the checks have not run, and
shown whatever the status (a failed training may be explained by them). See
:mod:`nsff_core.workflow.stages.diagnose` for the checks.

The ``log`` column names the log behind the status: the newest failed or cut-short log, the
evaluate log for ``ok``, else the scene's newest log (empty when there is none). With
``splits`` given, the render logs of other splits (ones removed from the scene) are ignored.
Only ``ok`` rows carry the evaluation's values (``frames``, ``psnr`` ...
``holdout_baseline_psnr_dynamic``, ``lpips_state``; the ``holdout_*`` columns for a run with
held-out frames, ``eval.holdout_every``): no row shows the scores of an earlier model beside a newer failure. The train
columns come from ``train/metrics.csv``, which Snakemake deletes when a train job starts.

When a run stops on an error, the workflow's ``onerror`` handler writes the table anyway, so a
batch run with ``--keep-going`` ends with a row per scene. By hand:
``python -m nsff_core.workflow.report results/summary.csv scene_a scene_b ...``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from nsff_core.model import io

from .layout import RESULTS, SceneLayout
from .stage import END_LINE, FAILED

log = logging.getLogger(__name__)

#: Columns of summary.csv, in order.
COLUMNS = (
    "scene",
    "status",
    "warnings",
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
    "holdout_psnr",
    "holdout_ssim",
    "holdout_lpips",
    "holdout_psnr_dynamic",
    "holdout_baseline_psnr",
    "holdout_baseline_ssim",
    "holdout_baseline_psnr_dynamic",
    "train_psnr",
    "train_steps",
    "train_seconds",
    "lpips_state",
    "eval",
    "log",
)
#: Bytes read from the end of a log to find its end line (run_stage writes nothing after it).
_TAIL_BYTES = 64 * 1024


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
    holdout = metrics.get("holdout") or {}
    if holdout.get("frames"):
        mean, base = holdout["mean"], holdout["baseline"]["mean"]
        for k in ("psnr", "ssim", "lpips", "psnr_dynamic"):
            row[f"holdout_{k}"] = _num(mean.get(k))
        for k in ("psnr", "ssim", "psnr_dynamic"):
            row[f"holdout_baseline_{k}"] = _num(base.get(k))
    return row


def _train_fields(layout: SceneLayout) -> dict:
    import pandas as pd

    row = {}
    metrics = Path(layout.train_metrics)
    if metrics.is_file():
        df = pd.read_csv(metrics)
        if "train/psnr" in df:
            psnr = df["train/psnr"].dropna()
            row["train_psnr"] = float(psnr.iloc[-1]) if len(psnr) else math.nan
        if "step" in df and df["step"].notna().any():
            row["train_steps"] = int(df["step"].max()) + 1
    bench = Path(layout.benchmark("train"))
    if bench.is_file():
        b = pd.read_csv(bench, sep="\t")
        if "s" in b and len(b):
            row["train_seconds"] = float(b["s"].mean())  # mean over --benchmark-repeats
    return row


def diagnostic_warnings(scene_dir: str | Path) -> str:
    """The failed checks of the scene's priors, joined by ``;`` (``""`` when none failed, and
    when ``diagnostics/diagnostics.json`` is missing or unreadable: logged)."""
    path = Path(SceneLayout(str(scene_dir)).diagnostics_json)
    if not path.is_file():
        return ""
    try:
        failed = json.loads(path.read_text())["failed"]
        if not isinstance(failed, list):
            raise TypeError(f"'failed' is a {type(failed).__name__}, not a list")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("summary: %s is unreadable (%s)", path, exc)
        return ""
    return ";".join(str(name) for name in failed)


def job_outcome(log_path: str | Path) -> str | None:
    """How the job that wrote ``log_path`` ended: ``"FINISHED"`` or ``"FAILED"`` (the
    constants of :mod:`nsff_core.workflow.stage`), or ``None`` when the log has no end line (the job
    was killed or is running, or the log is unreadable)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - _TAIL_BYTES))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None
    ends = list(END_LINE.finditer(tail))
    return ends[-1]["outcome"] if ends else None


def _job_logs(layout: SceneLayout, splits: Iterable[str] | None) -> list[Path]:
    """The scene's job logs, oldest first; with ``splits``, of those render splits only."""
    logs = list(Path(layout.logs).glob("*.log"))
    if splits is not None:
        keep = {Path(layout.log(f"render_{s}")).name for s in splits}
        logs = [p for p in logs if not p.name.startswith("render_") or p.name in keep]
    return sorted(logs, key=lambda p: p.stat().st_mtime)


def scene_status(scene_dir: str | Path, splits: Iterable[str] | None = None) -> tuple[str, str]:
    """The status of the scene in ``scene_dir`` and the log behind it (rules 1 to 4 of the
    module docstring; ``ok`` is not checked for readability here)."""
    layout = SceneLayout(str(scene_dir))
    logs = _job_logs(layout, splits)
    outcome = {p: job_outcome(p) for p in logs}
    failed = [p for p in logs if outcome[p] == FAILED]
    if failed:
        return "failed", str(failed[-1])
    eval_json = Path(layout.eval_metrics)
    evaluated = eval_json.stat().st_mtime if eval_json.is_file() else None
    cut_short = [
        p
        for p in logs
        if outcome[p] is None
        and (evaluated is None or (p.name != "evaluate.log" and p.stat().st_mtime > evaluated))
    ]
    if cut_short:
        return "incomplete", str(cut_short[-1])
    if evaluated is not None:
        eval_log = Path(layout.log("evaluate"))
        return "ok", str(eval_log) if eval_log.is_file() else ""
    return "missing", str(logs[-1]) if logs else ""


def summary_row(
    scene: str, results_dir: str | Path = RESULTS, splits: Iterable[str] | None = None
) -> dict:
    """The summary row of one scene (see the module docstring); ``splits``: the scene's render
    splits (None: every render log counts)."""
    layout = SceneLayout.of(scene, str(results_dir))
    eval_json = Path(layout.eval_metrics)
    status, log_path = scene_status(layout.root, splits)
    row: dict = {"scene": scene, "status": status, "eval": str(eval_json), "log": log_path}
    row["warnings"] = diagnostic_warnings(layout.root)
    if status == "ok":
        try:
            row.update(_eval_fields(json.loads(eval_json.read_text())))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("summary: %s is unreadable (%s)", eval_json, exc)
            row["status"] = "unreadable"
    row.update(_train_fields(layout))
    return row


def write_summary(
    scenes: list[str],
    out_csv: str | Path,
    results_dir: str | Path = RESULTS,
    splits: Mapping[str, Iterable[str]] | None = None,
) -> list[dict]:
    """Write ``out_csv`` with one row per scene (in the given order); returns the rows.

    ``splits``: the render splits of each scene (see :func:`summary_row`); None or a scene
    missing from it: every render log of the scene counts.
    """
    import pandas as pd

    splits = splits or {}
    rows = [summary_row(s, results_dir, splits.get(s)) for s in scenes]
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
    warned = [f"{r['scene']} ({r['warnings']})" for r in rows if r["warnings"]]
    if warned:
        log.warning("summary: failed checks of the priors: %s", ", ".join(warned))
    bad = [f"{r['scene']} ({r['status']})" for r in rows if r["status"] != "ok"]
    if bad:
        log.warning("summary: not ok: %s (see the log column)", ", ".join(bad))
    log.info("summary: wrote %s (%d scenes)", out_csv, len(rows))
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(sys.argv) < 3:
        sys.exit("usage: python -m nsff_core.workflow.report OUT_CSV SCENE [SCENE ...]")
    write_summary(sys.argv[2:], sys.argv[1])

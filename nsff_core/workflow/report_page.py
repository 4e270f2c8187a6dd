"""The items of the ``snakemake --report`` page: per scene its renders, priors, training curves,
evaluation and status, and the batch's summary table (rule ``summary``, folder
``results/report/``).

Snakemake puts a file in the report only when it exists, and refuses to build the report when a
file marked for it is missing. A scene that failed lacks the outputs of its failed rule and of
every rule after it, so the workflow marks none of the per-rule outputs: every item is written
here, by the summary job and, when a run stops on an error, by the workflow's ``onerror``
handler, from whatever the scene has. A failed scene then still has its status item (the
status, its failed checks and the end of the log behind the status).

Layout under ``out_dir`` (one folder per report section, each a directory output of the
summary rule marked for the report with the pattern ``{scene}/...``):

- ``renders/{scene}/{split}.html``: the split's four videos (colour, depth, static and dynamic
  parts) side by side, embedded as data URIs, so the page is self-contained;
- ``priors/{scene}/*.png``: the diagnose rule's images (contact sheet, camera path, per-frame
  measurements, disparity against the SfM points);
- ``training/{scene}/curves.png`` (loss terms, training PSNR and rays/s against the step, from
  ``train/metrics.csv`` and the train log) and ``training/{scene}/training.html`` (steps, time,
  rays/s, settings);
- ``evaluation/{scene}/metrics.html`` (the scores of ``eval/metrics.json`` as a table) and
  ``evaluation/{scene}/views.png`` (held-out views or frames beside their ground truth);
- ``status/{scene}/status.html``: status, warnings, log;
- ``summary/summary.html``: ``summary.csv`` as a table, one row per scene.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from nsff_core.model import io

from .layout import RENDER_PARTS, RESULTS, BatchLayout, SceneLayout

log = logging.getLogger(__name__)

#: The report sections: each is one folder under ``results/report`` (a rule output).
SECTIONS = ("renders", "priors", "training", "evaluation", "status", "summary")
#: The diagnose rule's images (roles of :data:`nsff_core.workflow.layout.DIAGNOSTIC_IMAGES`), in the
#: order a person reads them.
PRIOR_IMAGES = ("contact_sheet", "camera_path", "per_frame", "depth")
#: The videos of one render split: the part (None = the colour video) and its label.
VIDEO_PARTS = ((None, "colour"), *((part, part) for part in RENDER_PARTS))
#: Lines of a log shown on a status item.
LOG_TAIL_LINES = 60
#: The train log's progress lines (nsff_core.workflow.stages.train.ProgressLog): step and rays/s.
_TRAIN_LINE = re.compile(r"train: step (\d+)/\d+, .*?([0-9.]+) rays/s")
#: Status colours of the tables (summary.csv's status column).
_STATUS_COLOUR = {
    "ok": "#1a7f37",
    "failed": "#cf222e",
    "incomplete": "#bc4c00",
    "unreadable": "#cf222e",
    "missing": "#6e7781",
}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 12px; color: #1f2328; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: right; }
th { background: #f6f8fa; } td.text, th.text { text-align: left; }
.status { font-weight: bold; color: white; padding: 1px 6px; border-radius: 4px; }
.grid { display: grid; grid-template-columns: repeat(2, minmax(0, 1fr)); gap: 8px; }
.grid figure { margin: 0; } .grid video { width: 100%; background: #000; }
figcaption { font-size: 13px; color: #57606a; }
pre { background: #f6f8fa; padding: 8px; font-size: 12px; white-space: pre-wrap; }
"""


# --------------------------------------------------------------------------- small helpers


def _page(title: str, body: str) -> str:
    """A standalone HTML page (no script, no external resource)."""
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h3>{html.escape(title)}</h3>\n{body}\n</body></html>\n"
    )


def _status_badge(status: str) -> str:
    colour = _STATUS_COLOUR.get(status, "#6e7781")
    return f"<span class='status' style='background:{colour}'>{html.escape(status)}</span>"


def _cell(value, digits: int = 4) -> str:
    """A table cell: numbers rounded, NaN and None as an empty cell, text escaped."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "<td></td>"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"<td>{int(value)}</td>"
    if isinstance(value, (float, np.floating)):
        return f"<td>{float(value):.{digits}g}</td>"
    return f"<td class='text'>{html.escape(str(value))}</td>"


def _table(header: list[str], rows: Iterable[list], raw_columns: Iterable[int] = ()) -> str:
    """An HTML table; the cells of ``raw_columns`` are HTML already (badges)."""
    raw = set(raw_columns)
    head = "".join(f"<th class='text'>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = [f"<td class='text'>{v}</td>" if i in raw else _cell(v) for i, v in enumerate(row)]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>\n" + "\n".join(body) + "</table>"


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(cannot read {path}: {exc})"
    return "\n".join(text[-lines:])


def _savefig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100)
    plt.close(fig)


def _pyplot():
    """matplotlib's pyplot on the file-only backend (no display on a cluster node)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------- per section


def render_page(
    scene: str, split: str, layout: SceneLayout, video_format: str = "mp4"
) -> str | None:
    """The page of one render split: its four videos side by side, embedded (None when the
    split's colour video does not exist)."""
    mime = "image/gif" if video_format == "gif" else "video/mp4"
    figures = []
    for part, label in VIDEO_PARTS:
        path = Path(layout.render_video(split, video_format, part))
        if not path.is_file():
            if part is None:
                return None
            continue
        uri = _data_uri(path, mime)
        if video_format == "gif":
            media = f"<img src='{uri}' alt='{label}' style='width:100%'>"
        else:
            media = f"<video src='{uri}' autoplay loop muted playsinline controls></video>"
        figures.append(
            f"<figure>{media}<figcaption>{label}: {html.escape(path.name)}</figcaption></figure>"
        )
    intro = (
        f"<p>Scene <b>{html.escape(scene)}</b>, render split <b>{html.escape(split)}</b>: "
        "the full render, its depth, and the static and dynamic parts of the scene.</p>"
    )
    return _page(f"{scene}: {split}", intro + "<div class='grid'>" + "".join(figures) + "</div>")


def train_rays_per_second(log_path: Path) -> list[tuple[int, float]]:
    """(step, rays/s) of every progress line of a train log (empty when there is none)."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return []
    return [(int(m[1]), float(m[2])) for m in _TRAIN_LINE.finditer(text)]


def training_curves(metrics_csv: Path, out_png: Path, log_path: Path | None = None) -> bool:
    """Plot the loss terms, the training PSNR and (from the train log) rays/s against the step
    into ``out_png``; False (nothing written) when ``metrics_csv`` has no step."""
    import pandas as pd

    df = pd.read_csv(metrics_csv)
    if "step" not in df or not df["step"].notna().any():
        return False
    df = df[df["step"].notna()].groupby("step").last().reset_index()
    rays = train_rays_per_second(log_path) if log_path is not None else []
    plt = _pyplot()
    panels = 3 if rays else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6), layout="constrained")
    ax = axes[0]
    terms = [c for c in df.columns if c.startswith("loss/") and c != "loss/total"]
    for c in terms:
        values = df[c].abs().where(df[c] != 0)  # a term that is off at a step: no point
        if values.notna().any():
            ax.plot(df["step"], values, lw=0.8, alpha=0.6, label=c[len("loss/") :])
    if "loss/total" in df:
        ax.plot(df["step"], df["loss/total"].abs(), lw=2, color="black", label="total")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("loss terms (absolute value)")
    ax.legend(fontsize=6, ncol=2)
    ax = axes[1]
    if "train/psnr" in df:
        ax.plot(df["step"], df["train/psnr"], color="tab:blue")
    ax.set_xlabel("step")
    ax.set_ylabel("dB")
    ax.set_title("training PSNR (batch rays)")
    if rays:
        ax = axes[2]
        steps, values = zip(*rays, strict=True)
        ax.plot(steps, values, marker="o", ms=3, color="tab:green")
        ax.set_xlabel("step")
        ax.set_title("training rays/s")
        ax.set_ylim(bottom=0)
    _savefig(fig, out_png)
    return True


def training_page(scene: str, layout: SceneLayout) -> str:
    """Steps, wall time, rays/s and the model's main settings, as a table."""
    import pandas as pd

    rows: list[list] = []
    metrics = Path(layout.train_metrics)
    if metrics.is_file():
        df = pd.read_csv(metrics)
        if "step" in df and df["step"].notna().any():
            rows.append(["steps", int(df["step"].max()) + 1])
        for col, name in (("loss/total", "last loss"), ("train/psnr", "last training PSNR (dB)")):
            if col in df and df[col].notna().any():
                rows.append([name, float(df[col].dropna().iloc[-1])])
    rays = train_rays_per_second(Path(layout.log("train")))
    if rays:
        values = [r for _, r in rays]
        rows.append(["rays/s (median of the log's lines)", float(np.median(values))])
    bench = Path(layout.benchmark("train"))
    if bench.is_file():
        b = pd.read_csv(bench, sep="\t")
        if "s" in b and len(b):
            rows.append(["train job wall time (s)", float(b["s"].mean())])
        if "max_rss" in b and len(b):
            rows.append(["train job peak memory (MB)", float(b["max_rss"].mean())])
    config = Path(layout.train_config)
    if config.is_file():
        try:
            train = json.loads(config.read_text()).get("train", {})
        except ValueError:
            train = {}
        for key in ("field", "batch_size", "num_samples", "precision", "gpus"):
            if key in train:
                rows.append([f"train.{key}", train[key]])
    body = _table(["", "value"], rows) if rows else "<p>No training record yet.</p>"
    return _page(f"{scene}: training", body)


def _score_rows(metrics: dict) -> list[list]:
    """Rows (what, frames or views, PSNR, SSIM, LPIPS) of an ``eval/metrics.json``."""
    rows = []

    def add(name: str, count, mean: Mapping, suffix: str = "") -> None:
        rows.append([name, count, *(mean.get(f"{k}{suffix}") for k in ("psnr", "ssim", "lpips"))])

    test = metrics.get("test") or {}
    if test.get("mean"):
        add("test split, training frames", metrics.get("frames"), test["mean"])
        add("test split: dynamic region", metrics.get("frames"), test["mean"], "_dynamic")
    holdout = metrics.get("holdout") or {}
    if holdout.get("frames"):
        add("held-out frames", holdout["frames"], holdout["mean"])
        add("held-out frames: dynamic region", holdout["frames"], holdout["mean"], "_dynamic")
        add(
            "held-out frames: nearest training frame (baseline)",
            holdout["frames"],
            holdout["baseline"]["mean"],
        )
    novel = metrics.get("novel") or {}
    if novel.get("views"):
        add("held-out views", novel.get("count"), novel["mean"])
        add(
            "held-out views: nearest training frame (baseline)",
            novel.get("count"),
            novel["baseline"]["mean"],
        )
    return rows


def evaluation_page(scene: str, metrics: dict) -> str:
    rows = _score_rows(metrics)
    body = _table(["scored", "count", "PSNR (dB)", "SSIM", "LPIPS"], rows)
    lpips = metrics.get("lpips_state")
    if lpips:
        body += f"<p>LPIPS: {html.escape(str(lpips))}</p>"
    align = (metrics.get("novel") or {}).get("alignment") or {}
    if "centre_rms_pct_path" in align:
        body += (
            "<p>Camera alignment to the ground truth: centre RMS "
            f"{align['centre_rms_pct_path']:.3g} % of the path length.</p>"
        )
    return _page(f"{scene}: evaluation", body)


def _view_pairs(
    layout: SceneLayout, metrics: dict, limit: int
) -> list[tuple[str, Path | np.ndarray, np.ndarray]]:
    """Up to ``limit`` (title, render, ground truth) of held-out views (synthetic scenes) or
    held-out frames (``eval.holdout_every``)."""
    pairs: list = []
    novel = metrics.get("novel") or {}
    novel_dir = Path(layout.eval_novel)
    gt_npz = Path(layout.gt)
    if novel.get("views") and novel_dir.is_dir() and gt_npz.is_file():
        renders = sorted(novel_dir.glob("*_v*.png"))
        pick = np.unique(np.linspace(0, len(renders) - 1, min(limit, len(renders))).astype(int))
        with np.load(gt_npz) as gt:
            truth = gt["novel_images"] if "novel_images" in gt.files else None
            for k in pick if truth is not None else []:
                t, v = (int(x) for x in renders[k].stem.split("_v"))
                pairs.append((f"held-out view: time {t}, camera {v}", renders[k], truth[t, v]))
    holdout = metrics.get("holdout") or {}
    names = holdout.get("names") or []
    for name in names[: max(0, limit - len(pairs))]:
        render = Path(layout.render_frames("test")) / name
        frame = Path(layout.frames) / name
        if render.is_file() and frame.is_file():
            pairs.append((f"held-out frame {name}", render, io.read_image(frame)))
    return pairs


def views_figure(layout: SceneLayout, metrics: dict, out_png: Path, limit: int = 4) -> bool:
    """Held-out renders beside their ground truth, one row each; False when there is none."""
    pairs = _view_pairs(layout, metrics, limit)
    if not pairs:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(len(pairs), 2, figsize=(8, 2.6 * len(pairs)), squeeze=False)
    for row, (title, render, truth) in zip(axes, pairs, strict=True):
        img = io.read_image(render) if isinstance(render, Path) else render
        for ax, image, label in ((row[0], img, "render"), (row[1], truth, "ground truth")):
            ax.imshow(image)
            ax.set_title(f"{title}: {label}", fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    _savefig(fig, out_png)
    return True


def status_page(scene: str, row: Mapping) -> str:
    """The scene's status, failed checks of its priors and the log behind the status."""
    status = str(row.get("status", "missing"))
    log_path = str(row.get("log") or "")
    body = f"<p>Status: {_status_badge(status)}</p>"
    warnings = row.get("warnings")
    if isinstance(warnings, str) and warnings:
        body += f"<p>Failed checks of the priors: <b>{html.escape(warnings)}</b></p>"
    if log_path:
        body += f"<p>Log: <code>{html.escape(log_path)}</code></p>"
    if status != "ok" and log_path:
        body += (
            f"<p>The last {LOG_TAIL_LINES} lines of the log:</p>"
            f"<pre>{html.escape(_log_tail(Path(log_path)))}</pre>"
        )
    if status == "ok":
        body += "<p>Every job of the scene finished; the other sections hold its results.</p>"
    return _page(f"{scene}: {status}", body)


#: Columns of summary.csv shown on the summary item (the CSV itself has them all).
SUMMARY_COLUMNS = (
    "scene",
    "status",
    "warnings",
    "frames",
    "psnr",
    "ssim",
    "lpips",
    "psnr_dynamic",
    "novel_psnr",
    "baseline_psnr",
    "holdout_psnr",
    "holdout_baseline_psnr",
    "train_psnr",
    "train_steps",
    "train_seconds",
    "log",
)


def summary_page(rows: list[Mapping]) -> str:
    """summary.csv's main columns as a table, the status coloured."""
    present = [c for c in SUMMARY_COLUMNS if any(c in r for r in rows)]
    table_rows = []
    for r in rows:
        cells = []
        for c in present:
            v = r.get(c)
            if c == "status":
                v = _status_badge(str(v))
            elif isinstance(v, float) and c in ("frames", "train_steps") and math.isfinite(v):
                v = int(v)
            cells.append(v)
        table_rows.append(cells)
    raw = [present.index("status")] if "status" in present else []
    intro = (
        f"<p>{len(rows)} scene(s). Only <b>ok</b> rows carry scores; a failed or incomplete "
        "scene names the log to read. All columns: <code>results/summary.csv</code>.</p>"
    )
    return _page("Summary of the batch", intro + _table(present, table_rows, raw))


# --------------------------------------------------------------------------- entry point


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _scene_items(
    scene: str,
    row: Mapping,
    layout: SceneLayout,
    tmp: Mapping[str, Path],
    splits: Iterable[str],
    video_format: str,
) -> None:
    """Write one scene's items into the section folders ``tmp``; a missing input leaves its
    item out (a failed scene has only some)."""
    _write(tmp["status"] / scene / "status.html", status_page(scene, row))
    for split in splits:
        page = render_page(scene, split, layout, video_format)
        if page is not None:
            _write(tmp["renders"] / scene / f"{split}.html", page)
    for role in PRIOR_IMAGES:
        src = Path(layout.diagnostic_image(role))
        if src.is_file():
            (tmp["priors"] / scene).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp["priors"] / scene / src.name)
    metrics_csv = Path(layout.train_metrics)
    if metrics_csv.is_file():
        (tmp["training"] / scene).mkdir(parents=True, exist_ok=True)
        training_curves(
            metrics_csv, tmp["training"] / scene / "curves.png", Path(layout.log("train"))
        )
        _write(tmp["training"] / scene / "training.html", training_page(scene, layout))
    eval_json = Path(layout.eval_metrics)
    if row.get("status") == "ok" and eval_json.is_file():
        metrics = json.loads(eval_json.read_text())
        _write(tmp["evaluation"] / scene / "metrics.html", evaluation_page(scene, metrics))
        views_figure(layout, metrics, tmp["evaluation"] / scene / "views.png")


def write_report_items(
    rows: list[Mapping],
    out_dirs: Mapping[str, str | Path],
    results_dir: str | Path = RESULTS,
    splits: Mapping[str, Iterable[str]] | None = None,
    video_format: str = "mp4",
) -> None:
    """Write the report's items of every scene of ``rows`` (summary.csv's rows, see
    :func:`nsff_core.workflow.report.write_summary`) into the section folders ``out_dirs`` (section
    name -> folder, every name of :data:`SECTIONS`), each replaced atomically.

    ``splits``: the render splits of each scene. A scene's item that cannot be made (an
    unreadable input) is logged and left out: the report of a batch is never lost to one
    scene's files.
    """
    from contextlib import ExitStack

    splits = splits or {}
    with ExitStack() as stack:
        tmp = {s: stack.enter_context(io.atomic_dir(out_dirs[s])) for s in SECTIONS}
        for row in rows:
            scene = str(row["scene"])
            try:
                _scene_items(
                    scene,
                    row,
                    SceneLayout.of(scene, str(results_dir)),
                    tmp,
                    splits.get(scene, ()),
                    video_format,
                )
            except Exception as exc:  # one scene's bad file must not cost the batch's report
                log.warning("report: items of scene %s left out: %s", scene, exc)
        _write(tmp["summary"] / "summary.html", summary_page(rows))
    log.info(
        "report: wrote the items of %d scene(s) under %s",
        len(rows),
        Path(out_dirs["summary"]).parent,
    )


def scene_inputs(layout: SceneLayout, synthetic: bool) -> list[str]:
    """The files of a scene that its items read besides summary.csv's own inputs: the checks'
    images, the held-out views, the frames and (``synthetic``) the ground truth."""
    inputs = [layout.diagnostic_image(role) for role in PRIOR_IMAGES]
    inputs += [layout.eval_novel, layout.frames]
    if synthetic:
        inputs.append(layout.gt)
    return inputs


def items_after_error(
    splits: Mapping[str, Iterable[str]],
    video_format: str = "mp4",
    results_dir: str | Path = RESULTS,
) -> None:
    """The workflow's ``onerror``, after the summary table was written: the items from what
    exists, so that ``snakemake --report`` works on a batch with a failed scene (its status
    item shows the log). ``splits``: every scene of the sheet and its render splits. Never
    raises (the error that stopped the workflow must stay the one reported)."""
    import sys

    batch = BatchLayout(str(results_dir))
    csv = Path(batch.summary_csv)
    if not csv.is_file() or not splits:
        return
    try:
        import pandas as pd

        rows = pd.read_csv(csv).to_dict("records")
        folders = {s: Path(batch.report_section(s)) for s in SECTIONS}
        write_report_items(rows, folders, results_dir, splits, video_format)
    except Exception as exc:
        print(f"could not write the report's items after the error: {exc}", file=sys.stderr)

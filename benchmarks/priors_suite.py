"""Run the workflow's priors on the scene-variety suite and print their quality per variant.

    python benchmarks/priors_suite.py --workdir /tmp/suite [--variants suite_ball,suite_stop]
        [--width 512] [--cores 2] [--set masks.backend=none ...] [--sheets DIR] [--no-run]

The suite is the ``suite_*`` presets of ``nsff_core.model.synthetic.SUITE_PRESETS`` (``config.yaml``
repeats them under ``synthetic``): 854x480 clips of 24 frames that together cover smooth, medium
and high texture; a spinning ball, a sliding box, an articulated walker, two movers, a ball that
stops, a box sliding along the camera's translation (invisible to the epipolar test); sideways,
forward-dolly, arc and hand-held cameras; motion blur, sensor noise and JPEG 70.

The work directory gets the repository's ``config.yaml`` (with ``--set`` overrides, and the
suite presets without held-out views, which the priors never read) and a sheet ``scenes.tsv``
with one row per variant at training width ``--width``; then ``snakemake --keep-going priors``
runs there (a variant whose stage fails keeps its other columns). The ground truth at the
training size is rendered once into ``results/<variant>/gt/scene_<W>x<H>.npz``.

Printed per variant and stage: SfM registered frames, camera-centre error (% of the path length,
registered frames, after similarity alignment), focal error (%), forward-flow end-point error
over all and over dynamic pixels (px, training size), mask IoU (mean and worst frame) and false
positives (% of static pixels marked dynamic), disparity Spearman on static pixels, and each
rule's wall time (s); the last row is the mean over the variants that have the value.
``--sheets DIR`` writes a contact sheet per variant: four frames with the true mask outline
(green) and the predicted mask (red tint), the mask errors (false positives red, misses blue,
hits white) and the flow end-point error (black 0 to white 4 px).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from preprocess_table import (  # noqa: E402
    ground_truth_quality,
    gt_path,
    sfm_figures,
    stage_seconds,
    training_size,
)

REPO = HERE.parent

#: printed columns: (header, key of the row dict, number format)
COLUMNS = (
    ("reg", "registered", None),
    ("cam %", "centre RMS (% path)", ".2f"),
    ("focal %", "focal err (%)", ".2f"),
    ("EPE", "flow EPE fw (px)", ".2f"),
    ("EPE dyn", "flow EPE dynamic (px)", ".2f"),
    ("IoU", "mask IoU (mean)", ".2f"),
    ("IoU min", "mask IoU (min)", ".2f"),
    ("FP %", "mask false pos. (% static)", ".2f"),
    ("Spearman", "depth Spearman (mean)", ".3f"),
    ("t synth", "t synthetic", ".0f"),
    ("t frames", "t frames", ".0f"),
    ("t flow", "t flow", ".0f"),
    ("t masks", "t masks", ".0f"),
    ("t sfm", "t sfm", ".0f"),
    ("t depth", "t depth", ".0f"),
)
STAGES = ("synthetic", "frames", "flow", "masks", "sfm", "depth")


def suite_names() -> list[str]:
    from nsff_core.model.synthetic import SUITE_PRESETS

    return list(SUITE_PRESETS)


def _set(cfg: dict, assignment: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to the nested dict ``cfg``."""
    key, _, value = assignment.partition("=")
    if not _:
        sys.exit(f"--set needs KEY=VALUE, got {assignment!r}")
    *path, last = key.split(".")
    node = cfg
    for k in path:
        node = node.setdefault(k, {})
    node[last] = yaml.safe_load(value)


def make_workdir(workdir: Path, variants: list[str], width: int, sets: list[str]) -> None:
    """Write the work directory's config.yaml (repository's + overrides) and scenes.tsv."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["scenes"] = "scenes.tsv"
    for v in variants:  # the priors never read the held-out views: do not render them
        cfg["synthetic"][v]["novel_offsets"] = []
    for s in sets:
        _set(cfg, s)
    text = yaml.safe_dump(cfg, sort_keys=False)
    if not (workdir / "config.yaml").exists() or (workdir / "config.yaml").read_text() != text:
        (workdir / "config.yaml").write_text(text)  # unchanged: Snakemake reruns nothing
    rows = ["scene\tsource\twidth"] + [f"{v}\tsynthetic:{v}\t{width}" for v in variants]
    sheet = "\n".join(rows) + "\n"
    if not (workdir / "scenes.tsv").exists() or (workdir / "scenes.tsv").read_text() != sheet:
        (workdir / "scenes.tsv").write_text(sheet)


def run_priors(workdir: Path, cores: int) -> float:
    """``snakemake --keep-going priors`` in ``workdir``; returns its wall time (s)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    cmd += ["--cores", str(cores), "--keep-going", "priors"]
    t0 = time.perf_counter()
    r = subprocess.run(
        cmd, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True
    )
    if r.returncode != 0:
        print(f"snakemake priors failed for some variant(s):\n{r.stderr[-2500:]}", file=sys.stderr)
    return time.perf_counter() - t0


def ensure_gt(scene_dir: Path, variant: str, workdir: Path) -> Path | None:
    """The ground truth at the training size, rendered once (None before the frames rule)."""
    from nsff_core.config import stage_config
    from nsff_core.model.synthetic import render_scene

    size = training_size(scene_dir)
    if size is None:
        return None
    found = gt_path(scene_dir)
    if found is not None:
        return found
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())["synthetic"][variant]
    scfg = stage_config("synthetic", {**cfg, "novel_offsets": []})
    scene = render_scene(scfg, size=size)
    out = scene_dir / "gt" / f"scene_{size[0]}x{size[1]}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    fields = ("depth", "dynamic_mask", "flow_fw", "flow_bw", "c2w", "K", "object_poses")
    np.savez_compressed(tmp, **{k: getattr(scene, k) for k in fields})
    tmp.replace(out)
    return out


def variant_row(workdir: Path, variant: str) -> dict[str, object]:
    scene_dir = workdir / "results" / variant
    row: dict[str, object] = {"variant": variant}
    if training_size(scene_dir) is None:
        row["registered"] = "no frames"
        return row
    row.update(sfm_figures(scene_dir))
    if row["registered"].startswith("failed"):
        row["registered"] = "failed"
    for stage, sec in stage_seconds(scene_dir, STAGES).items():
        row[f"t {stage}"] = sec
    ensure_gt(scene_dir, variant, workdir)
    row.update(ground_truth_quality(scene_dir))
    return row


def _cell(value, fmt) -> str:
    if value is None:
        return "-"
    if fmt is None or not isinstance(value, float | int):
        return str(value)
    return "nan" if isinstance(value, float) and math.isnan(value) else format(value, fmt)


def table(rows: list[dict]) -> str:
    """Markdown table of ``rows`` with a mean row (over the rows that have each value)."""
    head = "| variant | " + " | ".join(h for h, _, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for r in rows:
        lines.append(
            f"| {r['variant']} | " + " | ".join(_cell(r.get(k), f) for _, k, f in COLUMNS) + " |"
        )
    mean = []
    for _, k, f in COLUMNS:
        if k == "registered":
            full = sum(1 for r in rows if _all_registered(r.get(k)))
            mean.append(f"{full}/{len(rows)} all")
            continue
        vals = [r[k] for r in rows if isinstance(r.get(k), float | int) and not _nan(r[k])]
        cell = _cell(float(np.mean(vals)), f) if vals else "-"
        mean.append(cell + ("" if len(vals) in (0, len(rows)) else f" ({len(vals)})"))
    lines.append("| **mean** | " + " | ".join(mean) + " |")
    return "\n".join(lines)


def _nan(v) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _all_registered(cell) -> bool:
    if not isinstance(cell, str) or "/" not in cell:
        return False
    a, b = cell.split("/")
    return a == b


def contact_sheet(workdir: Path, variant: str, out: Path) -> Path | None:
    """A PNG of four frames of ``variant``: frame with the true mask outline (green) and the
    predicted mask (red tint); mask errors (false positive red, miss blue, hit white) on the
    darkened frame; forward-flow end-point error (0 black .. 4 px white)."""
    import cv2

    from nsff_core.model import io

    scene_dir = workdir / "results" / variant
    path = gt_path(scene_dir)
    if path is None or not (scene_dir / "frames").is_dir():
        return None
    with np.load(path) as z:
        dyn, flow_gt = z["dynamic_mask"], z["flow_fw"]
    n = dyn.shape[0]
    rows = []
    for t in sorted({0, n // 3, (2 * n) // 3, n - 2}):
        img = io.read_image(scene_dir / "frames" / io.frame_name(t)).astype(np.float32)
        mp = scene_dir / "masks" / io.frame_name(t)
        pred = io.read_mask(mp) if mp.exists() else np.zeros_like(dyn[t])
        over = img.copy()
        over[pred] = 0.5 * over[pred] + 0.5 * np.array([255, 0, 0], np.float32)
        over = over.astype(np.uint8)
        contours, _ = cv2.findContours(
            dyn[t].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
        )
        cv2.drawContours(over, contours, -1, (0, 255, 0), 1)
        err = 0.35 * img
        err[pred & dyn[t]] = 255
        err[pred & ~dyn[t]] = (255, 0, 0)
        err[~pred & dyn[t]] = (0, 80, 255)
        fp = scene_dir / "flow_fw" / io.frame_name(t, ".flo")
        if fp.exists():
            epe = np.linalg.norm(io.read_flo(fp) - flow_gt[t], axis=-1)
            heat = np.repeat(np.clip(epe / 4.0 * 255, 0, 255)[..., None], 3, axis=-1)
        else:
            heat = np.zeros_like(img)
        rows.append(np.concatenate([over, err.astype(np.uint8), heat.astype(np.uint8)], axis=1))
    sheet = np.concatenate(rows, axis=0)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{variant}.png"
    io.write_image(target, sheet)
    return target


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, required=True, help="scratch work directory")
    ap.add_argument("--variants", default="", help="comma-separated presets (default: all)")
    ap.add_argument("--width", type=int, default=512, help="training width (default 512)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override in the work directory, e.g. masks.backend=none (repeatable)",
    )
    ap.add_argument("--sheets", type=Path, help="write a contact sheet per variant here")
    ap.add_argument("--no-run", action="store_true", help="only tabulate what is there")
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v] or suite_names()
    unknown = sorted(set(variants) - set(suite_names()))
    if unknown:
        sys.exit(f"unknown variant(s) {unknown}; the suite: {suite_names()}")
    workdir = args.workdir.resolve()
    make_workdir(workdir, variants, args.width, args.set)
    if not args.no_run:
        wall = run_priors(workdir, args.cores)
        print(f"snakemake priors: {wall:.0f} s wall on {args.cores} cores", file=sys.stderr)
    rows = [variant_row(workdir, v) for v in variants]
    print(table(rows))
    if args.sheets:
        for v in variants:
            target = contact_sheet(workdir, v, args.sheets)
            if target is not None:
                print(f"contact sheet: {target}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Does a change keep the workflow's outputs? Runs two commits side by side and compares them.

    python benchmarks/refactor_check.py BEFORE AFTER [--workdir DIR] [--cores N] [--compare-only]

Each commit is checked out into its own git worktree under ``--workdir`` and runs, with that
worktree's ``nsff_core`` first on ``PYTHONPATH``, the same two jobs:

- the priors of the synthetic demo (``synthetic:demo``: frames, cameras, depth, flow, masks);
- the whole DAG of the tiny preset on ``synthetic:tiny`` (priors, training at the preset's fixed
  seed, the test render and evaluation).

Then every file under ``results/<scene>`` is compared (Snakemake's logs and benchmark timings
excepted): bytes in general; JSON files value by value, with run times (keys naming a time or
ending in ``_s``) left out and the worktree's own path replaced by a placeholder (the two trees
live in different folders); the COLMAP database row by row (SQLite's file layout may differ for
the same rows). A table lists each group of files as identical or not; the exit status is 1 when
anything outside training and rendering differs, or any number of ``eval/metrics.json``.
Checkpoints, training logs and videos are listed but do not fail the check (they embed file
names and encoder metadata); the metrics computed from them are compared instead.

Both commits run in the Python environment of this script.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SHEET = (
    "scene\tsource\ttrain_preset\tsplits\n"
    "demo\tsynthetic:demo\tcpu_demo\ttest\n"
    "tiny\tsynthetic:tiny\ttiny\ttest\n"
)
#: what each run builds: every scene's priors (rule priors), the tiny scene's metrics (which
#: needs training, the test render and evaluation)
TARGETS = ("priors", "results/tiny/eval/metrics.json")
#: folders of a scene whose files are bookkeeping, not outputs
SKIP_DIRS = {"logs", "benchmarks"}
#: folders (first path component) whose files may differ without failing the check
SOFT_DIRS = {"train", "render", "eval"}
TREE_PLACEHOLDER = "<worktree>"


def is_time_key(key: str) -> bool:
    """A flattened JSON key that holds a run time (any component naming one)."""
    return any(
        "time" in part or "seconds" in part or "elapsed" in part or part.endswith("_s")
        for part in key.split(".")
    )


def flatten(obj, prefix: str = "") -> dict[str, object]:
    """Nested JSON as ``{"a.b.0.c": leaf}``."""
    if isinstance(obj, dict | list):
        items: dict[str, object] = {}
        pairs = obj.items() if isinstance(obj, dict) else enumerate(obj)
        for k, v in pairs:
            items.update(flatten(v, f"{prefix}{k}."))
        return items
    return {prefix.rstrip("."): obj}


def json_values(path: Path, tree: Path) -> dict[str, object]:
    """The file's values by flattened key, run times dropped, ``tree`` replaced."""
    text = path.read_text().replace(str(tree.resolve()), TREE_PLACEHOLDER)
    return {k: v for k, v in flatten(json.loads(text)).items() if not is_time_key(k)}


def sqlite_rows(path: Path) -> list[str]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def same_file(a: Path, b: Path, tree_a: Path, tree_b: Path) -> bool:
    if a.suffix == ".json":
        return json_values(a, tree_a) == json_values(b, tree_b)
    if a.suffix == ".db":
        return sqlite_rows(a) == sqlite_rows(b)
    return a.read_bytes() == b.read_bytes()


def scene_files(root: Path) -> set[str]:
    """Relative paths of every file under ``root`` outside :data:`SKIP_DIRS`."""
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.relative_to(root).parts[0] not in SKIP_DIRS
    }


def run_commit(rev: str, label: str, workdir: Path, cores: int) -> Path:
    """Check ``rev`` out into ``workdir/label`` and build :data:`TARGETS` there."""
    tree = workdir / label
    if not tree.exists():
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), rev], check=True
        )
    (tree / "check_scenes.tsv").write_text(SHEET)
    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    where = subprocess.run(
        [sys.executable, "-c", "import nsff_core; print(nsff_core.__file__)"],
        cwd=tree, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if not Path(where).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"[{label}] nsff_core imports from {where}, not from {tree}")
    cmd = [
        sys.executable, "-m", "snakemake", "--cores", str(cores), "--config",
        "scenes=check_scenes.tsv", "--", *TARGETS,
    ]  # fmt: skip
    start = time.monotonic()
    print(f"[{label}] {rev}: {' '.join(cmd[1:])}", flush=True)
    log = workdir / f"{label}.log"
    with log.open("w") as f:
        done = subprocess.run(cmd, cwd=tree, env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"[{label}] snakemake failed (exit {done.returncode}); see {log}")
    print(f"[{label}] done in {time.monotonic() - start:.0f} s", flush=True)
    return tree


def compare(tree_a: Path, tree_b: Path) -> bool:
    """Print the comparison table; True when nothing outside :data:`SOFT_DIRS` differs and
    every metric is equal."""
    ok = True
    rows = []
    for scene in ("demo", "tiny"):
        ra, rb = tree_a / "results" / scene, tree_b / "results" / scene
        fa, fb = scene_files(ra), scene_files(rb)
        groups: dict[str, list[str]] = {}
        for rel in sorted(fa | fb):
            groups.setdefault(rel.split("/")[0], []).append(rel)
        for group, files in groups.items():
            only = [f for f in files if f not in fa or f not in fb]
            differ = [
                f for f in files if f not in only and not same_file(ra / f, rb / f, tree_a, tree_b)
            ]
            soft = group in SOFT_DIRS
            if only:
                status = f"only in one tree: {', '.join(only[:3])}"
            elif differ:
                status = f"differs: {', '.join(differ[:3])}" + (" (allowed)" if soft else "")
            else:
                status = "identical"
            ok = ok and (soft or status == "identical")
            rows.append((f"{scene}/{group}", len(files), len(files) - len(only + differ), status))
        ma, mb = ra / "eval" / "metrics.json", rb / "eval" / "metrics.json"
        if ma.exists() and mb.exists():
            va, vb = json_values(ma, tree_a), json_values(mb, tree_b)
            keys = sorted(set(va) | set(vb))
            diff = [k for k in keys if va.get(k) != vb.get(k)]
            ok = ok and not diff
            status = f"differ: {', '.join(diff[:4])}" if diff else "identical"
            rows.append(
                (f"{scene}/eval/metrics.json values", len(keys), len(keys) - len(diff), status)
            )
    width = max(len(name) for name, *_ in rows)
    print(f"\n{'files':<{width}}  {'count':>5}  {'same':>5}  result")
    for name, n, same, status in rows:
        print(f"{name:<{width}}  {n:>5}  {same:>5}  {status}")
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("before", help="commit before the change (any git revision)")
    ap.add_argument("after", help="commit after the change")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/nsff_refactor_check"))
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument(
        "--compare-only", action="store_true", help="compare the results of an earlier run"
    )
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    labels = (("before", args.before), ("after", args.after))
    if args.compare_only:
        trees = [args.workdir / label for label, _ in labels]
    else:
        trees = [run_commit(rev, label, args.workdir, args.cores) for label, rev in labels]
    ok = compare(*trees)
    print("\nsame outputs" if ok else "\nOUTPUTS DIFFER")
    print(f"worktrees kept under {args.workdir} (remove: git worktree remove <dir>)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

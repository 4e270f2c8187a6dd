"""Shared by the batch benchmarks: a work directory holding N tiny synthetic scenes.

The repository's Snakefile runs with ``-d WORKDIR``; the work directory has its own
``config.yaml`` (the repository's, with overrides) and ``scenes.tsv``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def make_batch_workdir(
    workdir: Path, scenes: int, splits: str = "test", train: dict | None = None
) -> list[str]:
    """Write config.yaml and a sheet of ``scenes`` tiny synthetic scenes; return their names."""
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["scenes"] = "scenes.tsv"
    if train:
        cfg["train_presets"]["tiny"].update(train)
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    names = [f"tiny{i:02d}" for i in range(scenes)]
    rows = ["scene\tsource\ttrain_preset\tsplits"]
    rows += [f"{n}\tsynthetic:tiny\ttiny\t{splits}" for n in names]
    (workdir / "scenes.tsv").write_text("\n".join(rows) + "\n")
    return names


def snakemake(workdir: Path, *args: str, env: dict | None = None, check: bool = True) -> float:
    """Run the workflow in ``workdir``; return its wall time in seconds."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)]
    t0 = time.perf_counter()
    r = subprocess.run(
        [*cmd, *args],
        env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})),
        capture_output=True,
        text=True,
    )
    dt = time.perf_counter() - t0
    if check and r.returncode != 0:
        sys.exit(f"snakemake {' '.join(args)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return dt

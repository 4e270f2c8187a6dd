"""The tiny demo end to end through SLURM (or locally), with its outputs checked.

    bash .ci/slurm_up.sh 3 12            # a single-node cluster with 3 fake GPUs
    python .ci/slurm_demo.py             # every rule a SLURM job (weights: local by design)
    python .ci/slurm_demo.py --local     # the same run with `--cores all`, no SLURM
    bash .ci/slurm_down.sh

It writes a work directory (a temporary one unless --workdir) with a copy of config.yaml
(``scenes: scenes.tsv``) and a sheet of ``--scenes`` tiny synthetic scenes (train preset
``tiny``, split ``test``), runs

    timeout -k 30 LIMIT snakemake -s REPO/Snakefile -d WORKDIR --workflow-profile REPO/profiles/slurm
        --slurm-init-seconds-before-status-checks 5 --slurm-keep-successful-logs

and checks every output (frames, flow, masks, cameras, disparity, checkpoint, render video,
metrics, summary with status ok). For a SLURM run it also checks that every non-local job went
through SLURM: one finished SLURM job per job (from ``squeue -t all``; finished jobs stay listed
for MinJobAge), the GPU rules on partition ``gpu`` with a GPU, a SLURM log per job under
``.snakemake/slurm_logs``, and no SLURM job for the localrule ``weights``. It prints the wall
time, the SLURM jobs and the most jobs and GPU jobs that ran at once. Exit status 0 = all good.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
#: rules that run as SLURM jobs, once per scene (synthetic ... export) or once (summary)
SCENE_RULES = [
    "synthetic",
    "frames",
    "flow",
    "sfm_masks",
    "sfm",
    "depth",
    "masks",
    "diagnose",
    "train",
    "render",
    "evaluate",
    "export_colmap",
    "export",
]
GPU_RULES = {"train", "render", "evaluate", "export"}
NUM_FRAMES = 12  # config.yaml synthetic.tiny


def make_workdir(workdir: Path, scenes: int) -> list[str]:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["scenes"] = "scenes.tsv"
    names = ["tiny"] + [f"tiny{i}" for i in range(2, scenes + 1)]
    rows = "".join(f"{n}\tsynthetic:tiny\ttiny\ttest\n" for n in names)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg))
    (workdir / "scenes.tsv").write_text("scene\tsource\ttrain_preset\tsplits\n" + rows)
    return names


def squeue_all() -> list[dict]:
    """Every job slurmctld still knows (finished ones included, for MinJobAge seconds)."""
    fields = "JobID,Name,Comment,Partition,State,StartTime,EndTime,tres-per-job,NumCPUs"
    fmt = ",".join(f"{f}:|" for f in fields.split(","))  # no width limit, "|" after each
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-O", fmt], capture_output=True, text=True, check=True
    ).stdout
    keys = ["id", "name", "comment", "partition", "state", "start", "end", "tres", "cpus"]
    return [
        dict(zip(keys, line.rstrip("|").split("|"), strict=True))
        for line in out.splitlines()
        if line.strip()
    ]


def max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    """The most intervals open at one time (1 s resolution, as squeue reports)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = now = 0
    for _, step in events:  # an end sorts before a start at the same second
        now += step
        best = max(best, now)
    return best


def cuda_devices(workdir: Path, job_id: str) -> str:
    """What the job's SLURM log says about CUDA_VISIBLE_DEVICES (set by SLURM for --gpus)."""
    for log in (workdir / ".snakemake" / "slurm_logs").rglob(f"{job_id}.log"):
        found = re.search(r"CUDA_VISIBLE_DEVICES=(\S*)", log.read_text())
        if found:
            return f"CUDA_VISIBLE_DEVICES={found.group(1)}"
    return ""


def check_outputs(workdir: Path, scenes: list[str]) -> list[str]:
    cfg = yaml.safe_load((workdir / "config.yaml").read_text())
    keep_intermediates = cfg.get("keep_intermediates", True)
    problems = []
    for scene in scenes:
        res = workdir / "results" / scene

        def need(cond: bool, what: str, scene: str = scene) -> None:
            if not cond:
                problems.append(f"{scene}: {what}")

        need(len(list((res / "frames").glob("*.png"))) == NUM_FRAMES, f"{NUM_FRAMES} frames")
        need(len(list((res / "masks").glob("*.png"))) == NUM_FRAMES, "masks")
        need((res / "cameras.npz").is_file(), "cameras.npz")
        if keep_intermediates:  # else temp() outputs, deleted after train
            need(len(list((res / "flow_fw").glob("*.flo"))) == NUM_FRAMES - 1, "forward flow")
            need(len(list((res / "flow_bw").glob("*.flo"))) == NUM_FRAMES - 1, "backward flow")
            need(len(list((res / "disp").glob("*.npy"))) == NUM_FRAMES, "disp")
        need((res / "train" / "last.ckpt").is_file(), "train/last.ckpt")
        video = res / "render" / "test.mp4"
        need(video.is_file() and video.stat().st_size > 0, "render/test.mp4")
        metrics = res / "eval" / "metrics.json"
        need(metrics.is_file() and "test" in json.loads(metrics.read_text()), "eval/metrics.json")
        need((res / "weights.json").is_file(), "weights.json (the local rule)")
    summary_path = workdir / "results" / "summary.csv"
    if not summary_path.is_file():
        return problems + ["results/summary.csv is missing"]
    summary = pd.read_csv(summary_path)
    if sorted(summary["scene"]) != sorted(scenes) or set(summary["status"]) != {"ok"}:
        problems.append(f"results/summary.csv:\n{summary.to_string()}")
    return problems


def check_slurm(workdir: Path, scenes: list[str], first_id: int) -> tuple[list[str], list[dict]]:
    jobs = [j for j in squeue_all() if j["id"].isdigit() and int(j["id"]) > first_id]
    jobs.sort(key=lambda j: int(j["id"]))
    problems = []
    expected = sorted(
        [f"rule_{r}_wildcards_{s}" for r in SCENE_RULES for s in scenes if r != "render"]
        + [f"rule_render_wildcards_{s}_test" for s in scenes]  # wildcards scene, split
        + ["rule_summary"]
    )
    got = sorted(j["comment"] for j in jobs)
    if got != expected:
        problems.append(f"SLURM jobs by rule: expected {expected}, got {got}")
    for j in jobs:
        rule = j["comment"].removeprefix("rule_").split("_wildcards_")[0]
        if j["state"] != "COMPLETED":
            problems.append(f"SLURM job {j['id']} ({j['comment']}) is {j['state']}")
        if rule in GPU_RULES and ("gpu" not in j["tres"] or j["partition"] != "gpu"):
            problems.append(f"GPU job {j['id']} ({rule}): partition {j['partition']}, {j['tres']}")
        if rule not in GPU_RULES and "gpu" in j["tres"]:
            problems.append(f"CPU job {j['id']} ({rule}) asked for {j['tres']}")
    logs = list((workdir / ".snakemake" / "slurm_logs").rglob("*.log"))
    if len(logs) != len(jobs):
        problems.append(f"{len(logs)} SLURM logs under .snakemake/slurm_logs for {len(jobs)} jobs")
    return problems, jobs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--local", action="store_true", help="run with --cores all, without SLURM")
    ap.add_argument("--scenes", type=int, default=1, help="tiny scenes in the sheet (default 1)")
    ap.add_argument("--limit", type=int, default=900, help="timeout of the snakemake run, s")
    ap.add_argument("--init-seconds", type=int, default=5, help="first SLURM status check, s")
    ap.add_argument("--workdir", type=Path, help="work directory (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    args = ap.parse_args()

    mode = "local" if args.local else "slurm"
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"nsff-{mode}-demo-"))
    workdir = workdir.resolve()
    scenes = make_workdir(workdir, args.scenes)
    smk = Path(sys.executable).with_name("snakemake")
    cmd = [str(smk) if smk.exists() else "snakemake", "-s", str(REPO / "Snakefile")]
    cmd += ["-d", str(workdir)]
    if args.local:
        cmd += ["--workflow-profile", "none", "--cores", "all"]
    else:
        for tool in ("sbatch", "squeue", "sinfo"):
            if shutil.which(tool) is None:
                sys.exit(
                    f"slurm_demo: {tool} not found; start a cluster: bash .ci/slurm_up.sh 3 12"
                )
        cmd += ["--workflow-profile", str(REPO / "profiles" / "slurm")]
        cmd += ["--slurm-init-seconds-before-status-checks", str(args.init_seconds)]
        cmd += ["--slurm-keep-successful-logs"]
    cmd = ["timeout", "-k", "30", str(args.limit), *cmd]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    first_id = 0
    if not args.local:
        first_id = max([int(j["id"]) for j in squeue_all() if j["id"].isdigit()], default=0)

    print(f"slurm_demo: {mode} run of {len(scenes)} tiny scene(s) in {workdir}", flush=True)
    print("slurm_demo: " + " ".join(cmd), flush=True)
    log = workdir / "snakemake.log"
    t0 = time.monotonic()
    with log.open("w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
    wall = time.monotonic() - t0

    problems = []
    if rc != 0:
        why = " (timed out)" if rc in (124, 137) else ""
        problems.append(f"snakemake exited {rc}{why}; last lines of {log}:")
        problems += log.read_text().splitlines()[-40:]
    problems += check_outputs(workdir, scenes)
    if not args.local:
        slurm_problems, jobs = check_slurm(workdir, scenes, first_id)
        problems += slurm_problems
        print(f"{'job':>6}  {'rule':<34} {'partition':<9} {'cpus':>4}  {'tres':<12} state")
        for j in jobs:
            print(
                f"{j['id']:>6}  {j['comment']:<34} {j['partition']:<9} {j['cpus']:>4}  "
                f"{j['tres']:<12} {j['state']:<10} {cuda_devices(workdir, j['id'])}"
            )
        spans = {}
        for j in jobs:
            try:
                spans[j["id"]] = (
                    datetime.fromisoformat(j["start"]),
                    datetime.fromisoformat(j["end"]),
                )
            except ValueError:
                pass
        gpu_spans = [spans[j["id"]] for j in jobs if "gpu" in j["tres"] and j["id"] in spans]
        print(
            f"slurm_demo: {len(jobs)} SLURM jobs; at most {max_overlap(list(spans.values()))} "
            f"running at once, at most {max_overlap(gpu_spans)} GPU jobs at once"
        )

    print(f"slurm_demo: {mode} wall time {wall:.1f} s (snakemake exit {rc})")
    if problems:
        print("slurm_demo: FAILED\n  " + "\n  ".join(problems), file=sys.stderr)
        print(f"slurm_demo: work directory kept: {workdir}", file=sys.stderr)
        return 1
    print("slurm_demo: OK, every output is there" + ("" if args.local else ", every job via SLURM"))
    if args.workdir is None and not args.keep:
        shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

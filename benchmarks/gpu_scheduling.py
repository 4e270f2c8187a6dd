"""GPU scheduling on a workstation: N slots, more GPU jobs than slots, a real Snakemake run.

    python benchmarks/gpu_scheduling.py [--slots 3] [--jobs 6] [--steps 40] [--workdir DIR]

Builds the priors of ``--jobs`` tiny synthetic scenes, then trains them all with
``snakemake --cores 8 --resources gpu=SLOTS`` and ``NSFF_GPU_DEVICES=0,...,SLOTS-1`` standing in
for the GPUs (no GPU is needed: the claim only sets CUDA_VISIBLE_DEVICES). While Snakemake runs,
this script samples ``/proc/locks`` every 20 ms to see which slot lock files are held, by which
process. It prints, per job, the device id the job logged (``CUDA_VISIBLE_DEVICES=``) and its
time span, the maximum number of GPU jobs that ran at once and whether two jobs ever held the
same id.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from batch import make_batch_workdir, snakemake  # noqa: E402


def held_locks(inodes: dict[int, str]) -> dict[str, int]:
    """Device id -> pid for the slot lock files that are flock()ed now (from /proc/locks)."""
    held = {}
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if "FLOCK" not in parts or "->" in parts:  # skip waiters
            continue
        i = parts.index("FLOCK")
        pid, dev_inode = int(parts[i + 3]), parts[i + 4]
        inode = int(dev_inode.split(":")[-1])
        if inode in inodes:
            held[inodes[inode]] = pid
    return held


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slots", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=6)
    ap.add_argument("--steps", type=int, default=40, help="training steps per job")
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    wd = args.workdir or Path(tempfile.mkdtemp(prefix="nsff_sched_"))
    names = make_batch_workdir(wd, args.jobs, train={"max_steps": args.steps})
    locks = wd / "gpu-locks"
    locks.mkdir(exist_ok=True)
    ids = [str(i) for i in range(args.slots)]
    for i in ids:  # the lock files the claims use (nsff_core.workflow.gpu_slots._lock_name)
        (locks / f"gpu-{i}.lock").touch()
    inodes = {(locks / f"gpu-{i}.lock").stat().st_ino: i for i in ids}

    disp = [f"results/{n}/disp" for n in names]
    t = snakemake(wd, "--cores", "2", *disp)
    print(f"priors of {len(names)} tiny scenes: {t:.0f} s")

    samples: list[tuple[float, dict[str, int]]] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            samples.append((time.time(), held_locks(inodes)))
            time.sleep(0.02)

    env = {"NSFF_GPU_DEVICES": ",".join(ids), "NSFF_GPU_LOCK_DIR": str(locks)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    ckpts = [f"results/{n}/train/last.ckpt" for n in names]
    t = snakemake(wd, *ckpts, "--cores", "8", "--resources", f"gpu={args.slots}", env=env)
    stop.set()
    watcher.join()

    print(f"training {len(names)} scenes, --cores 8 --resources gpu={args.slots}: {t:.0f} s")
    print(f"\n{'scene':8s} {'device':>6s} {'start':>9s} {'end':>9s}")
    spans = []
    for n in names:
        text = (wd / "results" / n / "logs" / "train.log").read_text()
        dev = re.search(r"CUDA_VISIBLE_DEVICES=(\S+)", text)
        times = re.findall(r"^(\d\d:\d\d:\d\d) ", text, re.M)
        spans.append((n, dev.group(1) if dev else "-", times[0], times[-1]))
        print(f"{n:8s} {spans[-1][1]:>6s} {times[0]:>9s} {times[-1]:>9s}")

    most = max((len(h) for _, h in samples), default=0)
    when = next((ts for ts, h in samples if len(h) == most), None)
    holders: dict[str, set[int]] = {}
    for _, h in samples:
        for dev, pid in h.items():
            holders.setdefault(dev, set()).add(pid)
    # two jobs on one id at once is impossible with flock; check the logs say so too
    clash = 0
    for a in range(len(spans)):
        for b in range(a + 1, len(spans)):
            (_, da, sa, ea), (_, db, sb, eb) = spans[a], spans[b]
            if da == db and sa < eb and sb < ea:
                clash += 1
    at = datetime.fromtimestamp(when).strftime("%H:%M:%S.%f")[:-3] if when else "-"
    print(f"\nsamples of /proc/locks: {len(samples)}")
    print(f"max GPU jobs at once: {most} (first at {at})")
    print("jobs (pids) per device id: " + ", ".join(f"{d}: {len(p)}" for d, p in holders.items()))
    print(f"overlapping jobs in the logs that share an id: {clash}")
    print(f"work directory: {wd}")


if __name__ == "__main__":
    sys.exit(main())

"""No-op rerun of a finished batch: how long Snakemake takes to find nothing to do.

    python benchmarks/batch_noop.py [--scenes 10] [--repeats 3] [--workdir DIR]

Runs the whole DAG (priors, training with the ``tiny`` preset, the ``test`` render, evaluation,
summary) of ``--scenes`` tiny synthetic scenes once, then times ``snakemake --cores all`` again
``--repeats`` times (nothing to do: the wall time is start-up, config and sheet checks, DAG
building and the up-to-date checks) and one dry run (``-n``). Target: <= 5 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from batch import make_batch_workdir, snakemake  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args()
    wd = args.workdir or Path(tempfile.mkdtemp(prefix="nsff_batch_"))
    names = make_batch_workdir(wd, args.scenes)
    first = snakemake(wd, "--cores", "all")
    done = [n for n in names if (wd / "results" / n / "eval" / "metrics.json").exists()]
    print(f"first run, {len(names)} tiny scenes, whole DAG: {first:.0f} s ({len(done)} evaluated)")
    runs = [snakemake(wd, "--cores", "all") for _ in range(args.repeats)]
    dry = snakemake(wd, "-n", "--cores", "all")
    print(f"\n{'command':38s} {'wall s':>7s}")
    for i, t in enumerate(runs, 1):
        print(f"{'snakemake --cores all (no-op) #' + str(i):38s} {t:7.2f}")
    print(f"{'snakemake -n --cores all':38s} {dry:7.2f}")
    print(f"median no-op: {statistics.median(runs):.2f} s (target <= 5 s); work directory: {wd}")


if __name__ == "__main__":
    main()

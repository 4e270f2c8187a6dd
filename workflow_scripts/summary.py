"""Rule summary: results/summary.csv, one row per scene."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")

# nsff_core.workflow imports the standard library only; all else is imported inside run_stage,
# which logs any failure and claims the job's GPU slots first (so before torch is imported)
from nsff_core.workflow import run_stage

with run_stage(snakemake):
    from pathlib import Path

    from nsff_core.report import write_summary

    out = Path(snakemake.output[0])  # results/summary.csv: scenes live beside it
    write_summary(snakemake.params.scenes, out, out.parent, splits=snakemake.params.splits)

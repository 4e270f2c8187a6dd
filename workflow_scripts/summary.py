"""Rule summary: results/summary.csv, one row per scene."""

import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/..")

from nsff_core.report import write_summary
from nsff_core.workflow import run_stage

with run_stage(snakemake):
    out = Path(snakemake.output[0])  # results/summary.csv: scenes live beside it
    write_summary(snakemake.params.scenes, out, out.parent)

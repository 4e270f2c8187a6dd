"""Rule summary: results/summary.csv, one row per scene, and the items of the report page
(results/report/<section>/, see nsff_core/workflow/report_page.py)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")

# nsff_core.workflow.stage imports the standard library only; all else is imported inside run_stage,
# which logs any failure and claims the job's GPU slots first (so before torch is imported)
from nsff_core.workflow.stage import run_stage

with run_stage(snakemake):
    from pathlib import Path

    from nsff_core.workflow.report import write_summary
    from nsff_core.workflow.report_page import SECTIONS, write_report_items

    out = Path(snakemake.output.csv)  # results/summary.csv: scenes live beside it
    rows = write_summary(snakemake.params.scenes, out, out.parent, splits=snakemake.params.splits)
    write_report_items(
        rows,
        {section: getattr(snakemake.output, section) for section in SECTIONS},
        out.parent,
        splits=snakemake.params.splits,
        video_format=snakemake.params.video_format,
    )

"""Rule render: videos (rgb, depth, static, dynamic) and frames of one render split."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")

# nsff_core.workflow.stage imports the standard library only; all else is imported inside run_stage,
# which logs any failure and claims the job's GPU slots first (so before torch is imported)
from nsff_core.workflow.stage import run_stage

with run_stage(snakemake):
    from nsff_core.workflow.stages.render_split import render_split

    out = snakemake.output
    render_split(
        snakemake.input.ckpt,
        snakemake.input.cameras,
        snakemake.wildcards.split,
        out_dir=None,
        paths_dir=snakemake.params.paths_dir,
        fps=snakemake.params.fps,
        chunk=snakemake.params.chunk,
        scene=snakemake.wildcards.scene,
        # every file the rule declares, so that Snakemake removes them all when the job fails
        outputs={k: out[k] for k in ("video", "depth", "static", "dynamic", "frames")},
    )

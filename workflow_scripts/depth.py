"""Rule depth: per-frame relative disparity at training resolution."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")

# nsff_core.workflow.stage imports the standard library only; all else is imported inside run_stage,
# which logs any failure and claims the job's GPU slots first (so before torch is imported)
from nsff_core.workflow.stage import run_stage

with run_stage(snakemake):
    from nsff_core.config import stage_config
    from nsff_core.priors.depth import compute_depth

    compute_depth(
        snakemake.input.frames,
        snakemake.input.masks,
        snakemake.input.sfm,
        snakemake.input.cameras,
        snakemake.output.disp,
        stage_config("depth", snakemake.params.cfg),
        scene=snakemake.wildcards.scene,
        frames_json=snakemake.input.frames_json,
        weights=snakemake.input.weights,
    )

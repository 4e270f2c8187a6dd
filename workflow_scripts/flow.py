"""Rule flow: forward and backward optical flow with consistency masks."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")

# nsff_core.workflow.stage imports the standard library only; all else is imported inside run_stage,
# which logs any failure and claims the job's GPU slots first (so before torch is imported)
from nsff_core.workflow.stage import run_stage

with run_stage(snakemake):
    from nsff_core.config import stage_config
    from nsff_core.priors.flow import compute_flow

    compute_flow(
        snakemake.input.frames,
        snakemake.output.fw,
        snakemake.output.bw,
        snakemake.output.ok,
        stage_config("flow", snakemake.params.cfg),
        scene=snakemake.wildcards.scene,
        frames_json=snakemake.input.frames_json,
        weights=snakemake.input.weights,
    )

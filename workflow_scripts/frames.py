"""Rule frames: decode the scene's source (video or image folder) into training frames."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")

# nsff_core.workflow.stage imports the standard library only; all else is imported inside run_stage,
# which logs any failure and claims the job's GPU slots first (so before torch is imported)
from nsff_core.workflow.stage import run_stage

with run_stage(snakemake):
    from nsff_core.config import stage_config
    from nsff_core.priors.frames import extract_frames

    extract_frames(
        snakemake.params.source,
        snakemake.output.frames,
        snakemake.output.json,
        stage_config("frames", snakemake.params.cfg),
        scene=snakemake.wildcards.scene,
    )

"""Rule sfm: COLMAP structure from motion on the static pixels of the source frames (long side
capped at sfm.max_size); writes cameras.npz at training resolution."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")

# nsff_core.workflow.stage imports the standard library only; all else is imported inside run_stage,
# which logs any failure and claims the job's GPU slots first (so before torch is imported)
from nsff_core.workflow.stage import run_stage

with run_stage(snakemake):
    from nsff_core.config import stage_config
    from nsff_core.priors.sfm import run_sfm

    run_sfm(
        snakemake.input.frames,
        snakemake.input.masks,
        snakemake.output.sfm,
        snakemake.output.cameras,
        snakemake.output.poses_bounds,
        stage_config("sfm", snakemake.params.cfg),
        scene=snakemake.wildcards.scene,
        frames_json=snakemake.input.frames_json,
    )

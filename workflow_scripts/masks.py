"""Rule masks: the final motion masks (255 = dynamic), after SfM and depth."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")

# nsff_core.workflow.stage imports the standard library only; all else is imported inside run_stage,
# which logs any failure and claims the job's GPU slots first (so before torch is imported)
from nsff_core.workflow.stage import run_stage

with run_stage(snakemake):
    from nsff_core.config import stage_config
    from nsff_core.priors.masks import compute_masks

    compute_masks(
        snakemake.input.frames,
        snakemake.input.fw,
        snakemake.input.bw,
        snakemake.input.ok,
        snakemake.output.masks,
        stage_config("masks", snakemake.params.cfg),
        scene=snakemake.wildcards.scene,
        frames_json=snakemake.input.frames_json,
        weights=snakemake.input.weights,
        cameras=snakemake.input.cameras,
        disp_dir=snakemake.input.disp,
    )

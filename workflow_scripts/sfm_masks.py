"""Rule sfm_masks: the masks that SfM and the depth prior ignore (255 = dynamic), from the flow
alone, at the analysis size sfm.mask_size (see nsff_core.priors.sfm_masks)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")

# nsff_core.workflow.stage imports the standard library only; all else is imported inside run_stage,
# which logs any failure and claims the job's GPU slots first (so before torch is imported)
from nsff_core.workflow.stage import run_stage

with run_stage(snakemake):
    from nsff_core.config import stage_config
    from nsff_core.priors.sfm_masks import compute_sfm_masks

    compute_sfm_masks(
        snakemake.input.frames_json,
        snakemake.output.masks,
        stage_config("masks", snakemake.params.cfg),
        stage_config("flow", snakemake.params.flow_cfg),
        snakemake.params.mask_size,
        scene=snakemake.wildcards.scene,
        weights=snakemake.input.weights,
    )

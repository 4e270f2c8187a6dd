"""Rule diagnose: checks of the scene's priors before training, with images to look at."""

import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/..")

# nsff_core.workflow.stage imports the standard library only; all else is imported inside run_stage,
# which logs any failure and claims the job's GPU slots first (so before torch is imported)
from nsff_core.workflow.stage import run_stage

with run_stage(snakemake):
    from nsff_core.config import stage_config
    from nsff_core.workflow.stages.diagnose import diagnose_scene

    diagnose_scene(
        snakemake.input.frames,
        snakemake.input.fw,
        snakemake.input.ok,
        snakemake.input.masks,
        snakemake.input.disp,
        snakemake.input.cameras,
        snakemake.input.sfm,
        Path(snakemake.output.json).parent,
        stage_config("diagnostics", snakemake.params.cfg),
        scene=snakemake.wildcards.scene,
        masks_backend=snakemake.params.masks_backend,
    )

"""Rule train: NSFF training of one scene (resumes an interrupted run)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")

# nsff_core.workflow.stage imports the standard library only; all else is imported inside run_stage,
# which logs any failure and claims the job's GPU slots first (so before torch is imported)
from nsff_core.workflow.stage import run_stage

with run_stage(snakemake):
    from pathlib import Path

    from nsff_core.config import stage_config
    from nsff_core.workflow.stages.train import train_scene

    train_scene(
        snakemake.params.scene_dir,
        Path(snakemake.output.ckpt).parent,
        stage_config("train", snakemake.params.cfg),
        scene=snakemake.wildcards.scene,
        holdout_every=snakemake.params.holdout_every,
    )

"""Rule train: NSFF training of one scene (resumes an interrupted run)."""

import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/..")

from nsff_core.config import stage_config
from nsff_core.train import train_scene
from nsff_core.workflow import run_stage

with run_stage(snakemake):
    train_scene(
        snakemake.params.scene_dir,
        Path(snakemake.output.ckpt).parent,
        stage_config("train", snakemake.params.cfg),
        scene=snakemake.wildcards.scene,
    )

"""Rule train: NSFF training of one scene (resumes an interrupted run)."""

import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/..")

from nsff_core.gpu_slots import claim_for_job

# a GPU job takes a free device (lock files) before anything imports torch
claim_for_job(snakemake.resources.get("gpu", 0))

from nsff_core.config import stage_config  # noqa: E402
from nsff_core.train import train_scene  # noqa: E402
from nsff_core.workflow import run_stage  # noqa: E402

with run_stage(snakemake):
    train_scene(
        snakemake.params.scene_dir,
        Path(snakemake.output.ckpt).parent,
        stage_config("train", snakemake.params.cfg),
        scene=snakemake.wildcards.scene,
    )

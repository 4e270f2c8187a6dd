"""Rule evaluate: test-split and held-out-view metrics of one trained scene."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")

from nsff_core.gpu_slots import claim_for_job

# a GPU job takes a free device (lock files) before anything imports torch
claim_for_job(snakemake.resources.get("gpu", 0))

from nsff_core.evaluate import evaluate_scene  # noqa: E402
from nsff_core.workflow import run_stage  # noqa: E402

gt = snakemake.input.get("gt")  # a path for synthetic scenes, else an empty list
with run_stage(snakemake):
    evaluate_scene(
        snakemake.input.ckpt,
        snakemake.input.cameras,
        snakemake.input.frames,
        snakemake.input.masks,
        snakemake.input.test,
        snakemake.output.metrics,
        gt=gt if isinstance(gt, str) else (gt[0] if gt else None),
        novel_dir=snakemake.output.novel,
        chunk=snakemake.params.chunk,
        scene=snakemake.wildcards.scene,
    )

"""Rule evaluate: test-split and held-out-view metrics of one trained scene."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")

# nsff_core.workflow.stage imports the standard library only; all else is imported inside run_stage,
# which logs any failure and claims the job's GPU slots first (so before torch is imported)
from nsff_core.workflow.stage import run_stage

with run_stage(snakemake):
    from nsff_core.workflow.stages.evaluate import evaluate_scene

    gt = snakemake.input.get("gt")  # a path for synthetic scenes, else an empty list
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
        holdout_every=snakemake.params.holdout_every,
        novel_poses=snakemake.params.novel_poses,
        weights_marker=snakemake.input.weights,
    )

"""Rule masks: motion masks (255 = dynamic)."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")

from nsff_core.gpu_slots import claim_for_job

# a GPU job takes a free device (lock files) before anything imports torch
claim_for_job(snakemake.resources.get("gpu", 0))

from nsff_core.config import stage_config  # noqa: E402
from nsff_core.priors.masks import compute_masks  # noqa: E402
from nsff_core.workflow import run_stage  # noqa: E402

with run_stage(snakemake):
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
    )

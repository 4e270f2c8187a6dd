"""Rule flow: forward and backward optical flow with consistency masks."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")

from nsff_core.gpu_slots import claim_for_job

# a GPU job takes a free device (lock files) before anything imports torch
claim_for_job(snakemake.resources.get("gpu", 0))

from nsff_core.config import stage_config  # noqa: E402
from nsff_core.priors.flow import compute_flow  # noqa: E402
from nsff_core.workflow import run_stage  # noqa: E402

with run_stage(snakemake):
    compute_flow(
        snakemake.input.frames,
        snakemake.output.fw,
        snakemake.output.bw,
        snakemake.output.ok,
        stage_config("flow", snakemake.params.cfg),
        scene=snakemake.wildcards.scene,
        frames_json=snakemake.input.frames_json,
        weights=snakemake.input.weights,
    )

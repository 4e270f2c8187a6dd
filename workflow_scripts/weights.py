"""Rule weights: fetch the checkpoints of the scene's pretrained backends into the cache."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")

# nsff_core.workflow.stage imports the standard library only; all else is imported inside run_stage,
# which logs any failure and claims the job's GPU slots first (so before torch is imported)
from nsff_core.workflow.stage import run_stage

with run_stage(snakemake):
    from nsff_core.priors.weights import fetch_for_scene

    fetch_for_scene(
        snakemake.params.backends,
        snakemake.output.marker,
        snakemake.params.cache_dir or None,
        trust_on_first_use=snakemake.params.trust_on_first_use,
        scene=snakemake.wildcards.scene,
    )

"""Rule weights: fetch the checkpoints of the scene's pretrained backends into the cache."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")

from nsff_core.priors.weights import fetch_for_scene
from nsff_core.workflow import run_stage

with run_stage(snakemake):
    fetch_for_scene(
        snakemake.params.backends,
        snakemake.output.marker,
        snakemake.params.cache_dir or None,
        scene=snakemake.wildcards.scene,
    )

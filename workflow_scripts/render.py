"""Rule render: videos (rgb, depth, static, dynamic) and frames of one render split."""

import sys
from pathlib import Path

sys.path.insert(0, f"{snakemake.scriptdir}/..")

from nsff_core.gpu_slots import claim_for_job

# a GPU job takes a free device (lock files) before anything imports torch
claim_for_job(snakemake.resources.get("gpu", 0))

from nsff_core.render_split import render_split  # noqa: E402
from nsff_core.workflow import run_stage  # noqa: E402

with run_stage(snakemake):
    render_split(
        snakemake.input.ckpt,
        snakemake.input.cameras,
        snakemake.wildcards.split,
        Path(snakemake.output.video).parent,
        paths_dir=snakemake.params.paths_dir,
        video_format=Path(snakemake.output.video).suffix[1:],
        fps=snakemake.params.fps,
        chunk=snakemake.params.chunk,
        scene=snakemake.wildcards.scene,
    )

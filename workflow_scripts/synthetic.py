"""Rule synthetic: render the procedural scene and write its video and ground truth."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")

# nsff_core.workflow.stage imports the standard library only; all else is imported inside run_stage,
# which logs any failure and claims the job's GPU slots first (so before torch is imported)
from nsff_core.workflow.stage import run_stage

with run_stage(snakemake) as log:
    from nsff_core.config import stage_config
    from nsff_core.model.synthetic import render_scene, source_frames, write_scene

    cfg = stage_config("synthetic", snakemake.params.cfg)
    scene = render_scene(cfg)
    # the video gets the degraded frames (cfg.degrade); the ground truth stays clean
    write_scene(scene, snakemake.output.video, snakemake.output.gt, source_frames(scene, cfg))
    log.info(
        "wrote %d frames of %dx%d (layout %s, texture %s, movers %s, camera %s, degrade %s)",
        cfg.num_frames,
        cfg.width,
        cfg.height,
        cfg.layout,
        cfg.texture,
        ",".join(cfg.movers) or "none",
        cfg.camera,
        ",".join(cfg.degrade) or "none",
    )

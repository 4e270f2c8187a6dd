"""Rules export_colmap and export: the scene's COLMAP model as text, and nerfstudio's
transforms.json, depth PNGs, masks and the static point cloud from the trained model."""

import sys

sys.path.insert(0, f"{snakemake.scriptdir}/..")

# nsff_core.workflow.stage imports the standard library only; all else is imported inside run_stage,
# which logs any failure and claims the job's GPU slots first (so before torch is imported)
from nsff_core.workflow.stage import run_stage

with run_stage(snakemake):
    from nsff_core.workflow.stages import export

    scene = snakemake.wildcards.scene
    if snakemake.rule == "export_colmap":
        # its own job: pycolmap is imported in a process that writes no PNG after it
        export.write_colmap_text(
            f"{snakemake.input.sfm}/sparse/0",
            snakemake.input.cameras,
            snakemake.output.colmap,
            scene=scene,
        )
    else:
        out = snakemake.output
        export.export_scene(
            snakemake.input.ckpt,
            snakemake.input.cameras,
            snakemake.input.frames,
            snakemake.input.masks,
            # every file the rule declares, so that Snakemake removes them all when it fails
            {k: out[k] for k in ("transforms", "depth", "depth_scale", "masks", "points")},
            chunk=snakemake.params.chunk,
            scene=scene,
        )

# Exports for other tools under results/{scene}/export/ (see nsff_core/workflow/stages/export.py). The COLMAP
# model has its own rule: it needs only the SfM output, so it runs (and, with
# keep_intermediates: false, reads the temp() sfm/ folder) long before training ends, and a
# new model re-exports only what comes from the model.


rule export_colmap:
    input:
        sfm=SCENE.sfm,
        cameras=SCENE.cameras,
    output:
        colmap=directory(SCENE.export("colmap")),
    log:
        SCENE.log("export_colmap"),
    benchmark:
        SCENE.benchmark("export_colmap")
    conda:
        "../envs/nsff.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/export.py"


rule export:
    input:
        ckpt=SCENE.checkpoint,
        cameras=SCENE.cameras,
        frames=SCENE.frames,
        masks=SCENE.masks,
    output:
        transforms=SCENE.export("transforms.json"),
        depth=directory(SCENE.export("depth")),
        depth_scale=SCENE.export("depth_scale.json"),
        masks=directory(SCENE.export("masks")),
        points=SCENE.export("points.ply"),
    log:
        SCENE.log("export"),
    benchmark:
        SCENE.benchmark("export")
    conda:
        "../envs/nsff.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    params:
        chunk=stage_setting("render", "chunk"),
    script:
        "../workflow_scripts/export.py"

# Videos of a trained scene along the camera path of a render split. Every file the job writes
# is an output: Snakemake deletes them all before the job runs and when it fails, so no video
# of an earlier model survives a failed or killed render.


rule render:
    input:
        ckpt=SCENE.checkpoint,
        cameras=SCENE.cameras,
        path=camera_path_file,
    output:
        video=SCENE.render_video("{split}", video_format()),
        depth=SCENE.render_video("{split}", video_format(), "depth"),
        static=SCENE.render_video("{split}", video_format(), "static"),
        dynamic=SCENE.render_video("{split}", video_format(), "dynamic"),
        frames=directory(SCENE.render_frames("{split}")),
    log:
        SCENE.log("render_{split}"),
    benchmark:
        SCENE.benchmark("render_{split}")
    conda:
        "../envs/nsff.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    params:
        paths_dir=lambda wc: scene_layout(wc.scene).camera_paths,
        fps=stage_setting("render", "fps"),
        chunk=stage_setting("render", "chunk"),
    script:
        "../workflow_scripts/render.py"

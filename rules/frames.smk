# Sources: the built-in synthetic scene, and frame extraction from a video or image folder.


rule synthetic:
    output:
        video=SCENE.source_video,
        gt=SCENE.gt,
    log:
        SCENE.log("synthetic"),
    benchmark:
        SCENE.benchmark("synthetic")
    conda:
        "../envs/video.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        cfg=synthetic_cfg,
    script:
        "../workflow_scripts/synthetic.py"


rule frames:
    input:
        source_input,
    output:
        frames=directory(SCENE.frames),
        json=SCENE.frames_json,
    log:
        SCENE.log("frames"),
    benchmark:
        SCENE.benchmark("frames")
    conda:
        "../envs/video.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        source=source_path,
        cfg=stage_cfg("frames"),
    script:
        "../workflow_scripts/frames.py"

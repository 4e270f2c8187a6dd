# Per-frame relative disparity at training resolution.


rule depth:
    input:
        frames=SCENE.frames,
        frames_json=SCENE.frames_json,
        weights=SCENE.weights,
        masks=SCENE.sfm_masks,
        sfm=SCENE.sfm,
        cameras=SCENE.cameras,
    output:
        disp=intermediate(directory(SCENE.disp)),
    log:
        SCENE.log("depth"),
    benchmark:
        SCENE.benchmark("depth")
    conda:
        "../envs/depth.yaml"
    threads: 1
    resources:
        gpu=pretrained_gpu("depth"),
        mem_mb=lambda wc: 8000 if pretrained(wc, "depth") else 4000,
        runtime=60,
    params:
        cfg=stage_cfg("depth"),
    script:
        "../workflow_scripts/depth.py"

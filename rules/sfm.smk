# Structure from motion with COLMAP (pycolmap) on the source frames (long side capped at
# sfm.max_size; frames.json says where they are); dynamic pixels are masked out of the features.


rule sfm:
    input:
        frames=SCENE.frames,
        frames_json=SCENE.frames_json,
        masks=SCENE.sfm_masks,
    output:
        sfm=intermediate(directory(SCENE.sfm)),
        cameras=SCENE.cameras,
        poses_bounds=SCENE.poses_bounds,
    log:
        SCENE.log("sfm"),
    benchmark:
        SCENE.benchmark("sfm")
    conda:
        "../envs/sfm.yaml"
    threads: 4
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        cfg=stage_cfg("sfm"),
    script:
        "../workflow_scripts/sfm.py"

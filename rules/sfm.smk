# Structure from motion with COLMAP (pycolmap) on the source frames (long side capped at
# sfm.max_size; frames.json says where they are); dynamic pixels are masked out of the features.


rule sfm:
    input:
        frames="results/{scene}/frames",
        frames_json="results/{scene}/frames.json",
        masks="results/{scene}/sfm_masks",
    output:
        sfm=intermediate(directory("results/{scene}/sfm")),
        cameras="results/{scene}/cameras.npz",
        poses_bounds="results/{scene}/poses_bounds.npy",
    log:
        "results/{scene}/logs/sfm.log",
    benchmark:
        "results/{scene}/benchmarks/sfm.tsv"
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

# Per-frame relative disparity at training resolution.


rule depth:
    input:
        frames="results/{scene}/frames",
        frames_json="results/{scene}/frames.json",
        weights="results/{scene}/weights.json",
        masks="results/{scene}/sfm_masks",
        sfm="results/{scene}/sfm",
        cameras="results/{scene}/cameras.npz",
    output:
        disp=intermediate(directory("results/{scene}/disp")),
    log:
        "results/{scene}/logs/depth.log",
    benchmark:
        "results/{scene}/benchmarks/depth.tsv"
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

# Motion masks (255 = dynamic): epipolar test of the optical flow, or none.


rule masks:
    input:
        frames="results/{scene}/frames",
        frames_json="results/{scene}/frames.json",
        weights="results/{scene}/weights.json",
        fw="results/{scene}/flow_fw",
        bw="results/{scene}/flow_bw",
        ok="results/{scene}/flow_ok",
    output:
        masks=directory("results/{scene}/masks"),
    log:
        "results/{scene}/logs/masks.log",
    benchmark:
        "results/{scene}/benchmarks/masks.tsv"
    conda:
        "../envs/masks.yaml"
    threads: 1
    resources:
        gpu=pretrained_gpu("masks"),
        mem_mb=lambda wc: 8000 if pretrained(wc, "masks") else 4000,
        runtime=60,
    params:
        cfg=stage_cfg("masks"),
    script:
        "../workflow_scripts/masks.py"

# Motion masks (255 = dynamic), in two passes. sfm_masks: made from the flow alone (the epipolar
# test, or every instance of a semantic backend's classes), for SfM and the depth prior to
# ignore. masks: the final masks that training sees, made after SfM and depth (the rigidity
# test needs their cameras and depth).


rule sfm_masks:
    input:
        frames="results/{scene}/frames",
        frames_json="results/{scene}/frames.json",
        weights="results/{scene}/weights.json",
        fw="results/{scene}/flow_fw",
        bw="results/{scene}/flow_bw",
        ok="results/{scene}/flow_ok",
    output:
        masks=directory("results/{scene}/sfm_masks"),
    log:
        "results/{scene}/logs/sfm_masks.log",
    benchmark:
        "results/{scene}/benchmarks/sfm_masks.tsv"
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
        "../workflow_scripts/sfm_masks.py"


rule masks:
    input:
        frames="results/{scene}/frames",
        frames_json="results/{scene}/frames.json",
        weights="results/{scene}/weights.json",
        fw="results/{scene}/flow_fw",
        bw="results/{scene}/flow_bw",
        ok="results/{scene}/flow_ok",
        cameras="results/{scene}/cameras.npz",
        disp="results/{scene}/disp",
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

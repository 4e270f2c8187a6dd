# Optical flow between neighbouring frames, with forward-backward consistency masks.


rule flow:
    input:
        frames="results/{scene}/frames",
    output:
        fw=directory("results/{scene}/flow_fw"),
        bw=directory("results/{scene}/flow_bw"),
        ok=directory("results/{scene}/flow_ok"),
    log:
        "results/{scene}/logs/flow.log",
    benchmark:
        "results/{scene}/benchmarks/flow.tsv"
    conda:
        "../envs/flow.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        cfg=stage_cfg("flow"),
    script:
        "../workflow_scripts/flow.py"

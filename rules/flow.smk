# Optical flow between neighbouring frames, with forward-backward consistency masks.
# frames.json locates the source frames: raft always runs on them, dis when the frames rule
# enlarged them (flow.dis_scale: auto) or when flow.dis_scale is source.


rule flow:
    input:
        frames="results/{scene}/frames",
        frames_json="results/{scene}/frames.json",
        weights="results/{scene}/weights.json",
    output:
        fw=intermediate(directory("results/{scene}/flow_fw")),
        bw=intermediate(directory("results/{scene}/flow_bw")),
        ok=intermediate(directory("results/{scene}/flow_ok")),
    log:
        "results/{scene}/logs/flow.log",
    benchmark:
        "results/{scene}/benchmarks/flow.tsv"
    conda:
        "../envs/flow.yaml"
    threads: 1
    resources:
        gpu=pretrained_gpu("flow"),
        mem_mb=lambda wc: 8000 if pretrained(wc, "flow") else 4000,
        runtime=120,
    params:
        cfg=stage_cfg("flow"),
    script:
        "../workflow_scripts/flow.py"


# The flow between consecutive training frames of a scene with held-out frames
# (eval.holdout_every): computed from those two frames alone, so no held-out frame enters a
# training loss through its flow. Only train of such a scene asks for it.
rule flow_holdout:
    input:
        frames="results/{scene}/frames",
        frames_json="results/{scene}/frames.json",
        weights="results/{scene}/weights.json",
    output:
        flow=intermediate(directory("results/{scene}/flow_holdout")),
    log:
        "results/{scene}/logs/flow_holdout.log",
    benchmark:
        "results/{scene}/benchmarks/flow_holdout.tsv"
    conda:
        "../envs/flow.yaml"
    threads: 1
    resources:
        gpu=pretrained_gpu("flow"),
        mem_mb=lambda wc: 8000 if pretrained(wc, "flow") else 4000,
        runtime=120,
    params:
        cfg=stage_cfg("flow"),
        holdout_every=holdout_every,
    script:
        "../workflow_scripts/flow_holdout.py"

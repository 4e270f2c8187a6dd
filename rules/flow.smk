# Optical flow between neighbouring frames, with forward-backward consistency masks.
# frames.json locates the source frames: raft always runs on them, dis when the frames rule
# enlarged them (flow.dis_scale: auto) or when flow.dis_scale is source.


rule flow:
    input:
        frames=SCENE.frames,
        frames_json=SCENE.frames_json,
        weights=SCENE.weights,
    output:
        fw=intermediate(directory(SCENE.flow_fw)),
        bw=intermediate(directory(SCENE.flow_bw)),
        ok=intermediate(directory(SCENE.flow_ok)),
    log:
        SCENE.log("flow"),
    benchmark:
        SCENE.benchmark("flow")
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
        frames=SCENE.frames,
        frames_json=SCENE.frames_json,
        weights=SCENE.weights,
    output:
        flow=intermediate(directory(SCENE.flow_holdout)),
    log:
        SCENE.log("flow_holdout"),
    benchmark:
        SCENE.benchmark("flow_holdout")
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

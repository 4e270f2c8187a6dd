# NSFF training of one scene (Lightning). Checkpoints of a run in progress live in
# train/running/, so a rerun after a crash resumes there.


rule train:
    input:
        frames="results/{scene}/frames",
        fw="results/{scene}/flow_fw",
        bw="results/{scene}/flow_bw",
        ok="results/{scene}/flow_ok",
        masks="results/{scene}/masks",
        sfm="results/{scene}/sfm",
        cameras="results/{scene}/cameras.npz",
        disp="results/{scene}/disp",
        # flow between training frames, with eval.holdout_every only
        flow_holdout=holdout_flow,
        # train waits for the checks (and a strict failure stops it); ancient: a rerun of
        # diagnose alone (new thresholds) does not retrain
        diagnostics=ancient("results/{scene}/diagnostics/diagnostics.json"),
    output:
        ckpt="results/{scene}/train/last.ckpt",
        config="results/{scene}/train/config.json",
        metrics="results/{scene}/train/metrics.csv",
    log:
        "results/{scene}/logs/train.log",
    benchmark:
        "results/{scene}/benchmarks/train.tsv"
    conda:
        "../envs/nsff.yaml"
    threads: 2
    resources:
        gpu=train_gpus,
        mem_mb=16000,
        runtime=1440,
    params:
        cfg=stage_cfg("train"),
        scene_dir=lambda wc: f"results/{wc.scene}",
        holdout_every=holdout_every,
    script:
        "../workflow_scripts/train.py"

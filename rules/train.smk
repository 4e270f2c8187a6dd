# NSFF training of one scene (Lightning). Checkpoints of a run in progress live in
# train/running/, so a rerun after a crash resumes there.


rule train:
    input:
        frames=SCENE.frames,
        fw=SCENE.flow_fw,
        bw=SCENE.flow_bw,
        ok=SCENE.flow_ok,
        masks=SCENE.masks,
        sfm=SCENE.sfm,
        cameras=SCENE.cameras,
        disp=SCENE.disp,
        # flow between training frames, with eval.holdout_every only
        flow_holdout=holdout_flow,
        # train waits for the checks (and a strict failure stops it); ancient: a rerun of
        # diagnose alone (new thresholds) does not retrain
        diagnostics=ancient(SCENE.diagnostics_json),
    output:
        ckpt=SCENE.checkpoint,
        config=SCENE.train_config,
        metrics=SCENE.train_metrics,
    log:
        SCENE.log("train"),
    benchmark:
        SCENE.benchmark("train")
    conda:
        "../envs/nsff.yaml"
    threads: 2
    resources:
        gpu=train_gpus,
        mem_mb=16000,
        runtime=1440,
    params:
        cfg=stage_cfg("train"),
        scene_dir=lambda wc: scene_layout(wc.scene).root,
        holdout_every=holdout_every,
    script:
        "../workflow_scripts/train.py"

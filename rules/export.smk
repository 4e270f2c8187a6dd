# Exports for other tools under results/{scene}/export/ (see nsff_core/export.py). The COLMAP
# model has its own rule: it needs only the SfM output, so it runs (and, with
# keep_intermediates: false, reads the temp() sfm/ folder) long before training ends, and a
# new model re-exports only what comes from the model.


rule export_colmap:
    input:
        sfm="results/{scene}/sfm",
        cameras="results/{scene}/cameras.npz",
    output:
        colmap=directory("results/{scene}/export/colmap"),
    log:
        "results/{scene}/logs/export_colmap.log",
    benchmark:
        "results/{scene}/benchmarks/export_colmap.tsv"
    conda:
        "../envs/nsff.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../workflow_scripts/export.py"


rule export:
    input:
        ckpt="results/{scene}/train/last.ckpt",
        cameras="results/{scene}/cameras.npz",
        frames="results/{scene}/frames",
        masks="results/{scene}/masks",
    output:
        transforms="results/{scene}/export/transforms.json",
        depth=directory("results/{scene}/export/depth"),
        depth_scale="results/{scene}/export/depth_scale.json",
        masks=directory("results/{scene}/export/masks"),
        points="results/{scene}/export/points.ply",
    log:
        "results/{scene}/logs/export.log",
    benchmark:
        "results/{scene}/benchmarks/export.tsv"
    conda:
        "../envs/nsff.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    params:
        # the scene's train setting (its train_preset applied), nothing else of train
        chunk=lambda wc: stage_cfg("train")(wc).get("chunk", 4096),
    script:
        "../workflow_scripts/export.py"

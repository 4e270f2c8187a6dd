# Metrics of a trained scene: the `test` split against the training frames (full image and
# dynamic region) and, for synthetic scenes, renders of the held-out ground-truth cameras.


rule evaluate:
    input:
        ckpt="results/{scene}/train/last.ckpt",
        cameras="results/{scene}/cameras.npz",
        frames="results/{scene}/frames",
        masks="results/{scene}/masks",
        test="results/{scene}/render/test",
        gt=evaluate_gt,
    output:
        metrics="results/{scene}/eval/metrics.json",
        novel=directory("results/{scene}/eval/novel"),
    log:
        "results/{scene}/logs/evaluate.log",
    benchmark:
        "results/{scene}/benchmarks/evaluate.tsv"
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
        holdout_every=holdout_every,
    script:
        "../workflow_scripts/evaluate.py"

# Metrics of a trained scene: the `test` split against the training frames (full image and
# dynamic region) and, for synthetic scenes, renders of the held-out ground-truth cameras;
# PSNR, SSIM and LPIPS (its weights: rule weights_evaluate).


rule evaluate:
    input:
        ckpt=SCENE.checkpoint,
        cameras=SCENE.cameras,
        frames=SCENE.frames,
        masks=SCENE.masks,
        test=SCENE.render_frames("test"),
        gt=evaluate_gt,
        # the LPIPS checkpoints (rule weights_evaluate; without them LPIPS is unavailable)
        weights=SCENE.weights_evaluate,
    output:
        metrics=SCENE.eval_metrics,
        novel=directory(SCENE.eval_novel),
    log:
        SCENE.log("evaluate"),
    benchmark:
        SCENE.benchmark("evaluate")
    conda:
        "../envs/nsff.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=120,
    params:
        chunk=stage_setting("render", "chunk"),
        holdout_every=holdout_every,
        novel_poses=stage_setting("eval", "novel_poses"),
    script:
        "../workflow_scripts/evaluate.py"

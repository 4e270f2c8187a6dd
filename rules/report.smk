# Tables over all scenes. The summary waits for every job of every scene (the render splits
# that evaluate does not read included): a scene's status comes from the end lines of its job
# logs (see nsff_core/report.py), and a job still running has none.


rule summary:
    input:
        evals=expand("results/{scene}/eval/metrics.json", scene=list(SCENES)),
        train=expand("results/{scene}/train/metrics.csv", scene=list(SCENES)),
        renders=[video for scene in SCENES for video in render_targets(scene)],
        # the warnings column: a rerun of diagnose alone (new thresholds) updates the table
        diagnostics=expand("results/{scene}/diagnostics/diagnostics.json", scene=list(SCENES)),
    output:
        "results/summary.csv",
    log:
        "results/logs/summary.log",
    benchmark:
        "results/benchmarks/summary.tsv"
    conda:
        "../envs/nsff.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        scenes=list(SCENES),
        # the render splits of each scene: render logs of other splits are not counted
        splits={scene: _sheet.scene_splits(config, SCENES[scene]) for scene in SCENES},
    script:
        "../workflow_scripts/summary.py"

# Tables over all scenes.


rule summary:
    input:
        evals=expand("results/{scene}/eval/metrics.json", scene=list(SCENES)),
        train=expand("results/{scene}/train/metrics.csv", scene=list(SCENES)),
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
    script:
        "../workflow_scripts/summary.py"

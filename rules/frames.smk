# Sources: the built-in synthetic scene, and frame extraction from a video or image folder.


rule synthetic:
    output:
        video="results/{scene}/source/video.mp4",
        gt="results/{scene}/gt/scene.npz",
    log:
        "results/{scene}/logs/synthetic.log",
    benchmark:
        "results/{scene}/benchmarks/synthetic.tsv"
    conda:
        "../envs/video.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        cfg=synthetic_cfg,
    script:
        "../workflow_scripts/synthetic.py"


rule frames:
    input:
        source_input,
    output:
        frames=directory("results/{scene}/frames"),
        json="results/{scene}/frames.json",
    log:
        "results/{scene}/logs/frames.log",
    benchmark:
        "results/{scene}/benchmarks/frames.tsv"
    conda:
        "../envs/video.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        source=source_path,
        cfg=stage_cfg("frames"),
    script:
        "../workflow_scripts/frames.py"

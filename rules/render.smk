# Videos of a trained scene along the camera path of a render split. Every file the job writes
# is an output: Snakemake deletes them all before the job runs and when it fails, so no video
# of an earlier model survives a failed or killed render.


rule render:
    input:
        ckpt="results/{scene}/train/last.ckpt",
        cameras="results/{scene}/cameras.npz",
        path=camera_path_file,
    output:
        video=f"results/{{scene}}/render/{{split}}.{video_format()}",
        depth=f"results/{{scene}}/render/{{split}}_depth.{video_format()}",
        static=f"results/{{scene}}/render/{{split}}_static.{video_format()}",
        dynamic=f"results/{{scene}}/render/{{split}}_dynamic.{video_format()}",
        frames=directory("results/{scene}/render/{split}"),
    log:
        "results/{scene}/logs/render_{split}.log",
    benchmark:
        "results/{scene}/benchmarks/render_{split}.tsv"
    wildcard_constraints:
        split=r"test|test_spiral\d*|test_spiral_time|test_fixview\d+_interp\d+|bullet\d+(\.\d+)?|path_[A-Za-z0-9_-]+",
    conda:
        "../envs/nsff.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    params:
        paths_dir=lambda wc: f"results/{wc.scene}/paths",
        fps=lambda wc: config.get("render", {}).get("fps", 10.0),
        # the scene's train setting (its train_preset applied), nothing else of train
        chunk=lambda wc: stage_cfg("train")(wc).get("chunk", 4096),
    script:
        "../workflow_scripts/render.py"

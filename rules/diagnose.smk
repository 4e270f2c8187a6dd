# Checks of a scene's priors before training (field of view, registration, mask coverage, flow
# consistency, disparity against the SfM points), with a contact sheet and plots; warnings in
# the log and in summary.csv, errors under diagnostics.strict. Fast: seconds per scene.


rule diagnose:
    input:
        frames="results/{scene}/frames",
        fw="results/{scene}/flow_fw",
        ok="results/{scene}/flow_ok",
        masks="results/{scene}/masks",
        sfm="results/{scene}/sfm",
        cameras="results/{scene}/cameras.npz",
        disp="results/{scene}/disp",
    output:
        # names as in nsff_core/diagnose.py (JSON_NAME, IMAGE_NAMES)
        json="results/{scene}/diagnostics/diagnostics.json",
        contact_sheet="results/{scene}/diagnostics/contact_sheet.png",
        per_frame="results/{scene}/diagnostics/per_frame.png",
        camera_path="results/{scene}/diagnostics/camera_path.png",
        depth="results/{scene}/diagnostics/depth_vs_sfm.png",
    log:
        "results/{scene}/logs/diagnose.log",
    benchmark:
        "results/{scene}/benchmarks/diagnose.tsv"
    conda:
        "../envs/depth.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cfg=stage_cfg("diagnostics"),
        masks_backend=lambda wc: stage_cfg("masks")(wc).get("backend"),
    script:
        "../workflow_scripts/diagnose.py"

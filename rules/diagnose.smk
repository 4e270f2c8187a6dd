# Checks of a scene's priors before training (field of view, registration, mask coverage, flow
# consistency, disparity against the SfM points), with a contact sheet and plots; warnings in
# the log and in summary.csv, errors under diagnostics.strict. Fast: seconds per scene.


rule diagnose:
    input:
        frames=SCENE.frames,
        fw=SCENE.flow_fw,
        ok=SCENE.flow_ok,
        masks=SCENE.masks,
        sfm=SCENE.sfm,
        cameras=SCENE.cameras,
        disp=SCENE.disp,
    output:
        # names as in nsff_core/workflow/stages/diagnose.py (JSON_NAME, IMAGE_NAMES)
        json=SCENE.diagnostics_json,
        contact_sheet=SCENE.diagnostic_image("contact_sheet"),
        per_frame=SCENE.diagnostic_image("per_frame"),
        camera_path=SCENE.diagnostic_image("camera_path"),
        depth=SCENE.diagnostic_image("depth"),
    log:
        SCENE.log("diagnose"),
    benchmark:
        SCENE.benchmark("diagnose")
    conda:
        "../envs/depth.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        cfg=stage_cfg("diagnostics"),
        masks_backend=stage_setting("masks", "backend"),
    script:
        "../workflow_scripts/diagnose.py"

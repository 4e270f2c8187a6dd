# Motion masks (255 = dynamic), in two passes. sfm_masks: made from the flow alone (the epipolar
# test, or every instance of a semantic backend's classes), for SfM and the depth prior to
# ignore; computed on the source frames scaled to sfm.mask_size with their own flow, so that
# SfM does not depend on the training size. masks: the final masks that training sees, made
# after SfM and depth (the rigidity test needs their cameras and depth).


rule sfm_masks:
    input:
        frames=SCENE.frames,
        frames_json=SCENE.frames_json,
        weights=SCENE.weights,
    output:
        masks=directory(SCENE.sfm_masks),
    log:
        SCENE.log("sfm_masks"),
    benchmark:
        SCENE.benchmark("sfm_masks")
    conda:
        "../envs/masks.yaml"
    threads: 1
    resources:
        gpu=pretrained_gpu("masks"),
        mem_mb=lambda wc: 8000 if pretrained(wc, "masks") else 4000,
        runtime=60,
    params:
        cfg=stage_cfg("masks"),
        flow_cfg=stage_cfg("flow"),
        mask_size=stage_setting("sfm", "mask_size"),
    script:
        "../workflow_scripts/sfm_masks.py"


rule masks:
    input:
        frames=SCENE.frames,
        frames_json=SCENE.frames_json,
        weights=SCENE.weights,
        fw=SCENE.flow_fw,
        bw=SCENE.flow_bw,
        ok=SCENE.flow_ok,
        cameras=SCENE.cameras,
        disp=SCENE.disp,
    output:
        masks=directory(SCENE.masks),
    log:
        SCENE.log("masks"),
    benchmark:
        SCENE.benchmark("masks")
    conda:
        "../envs/masks.yaml"
    threads: 1
    resources:
        gpu=pretrained_gpu("masks"),
        mem_mb=lambda wc: 8000 if pretrained(wc, "masks") else 4000,
        runtime=60,
    params:
        cfg=stage_cfg("masks"),
    script:
        "../workflow_scripts/masks.py"

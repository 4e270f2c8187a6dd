# Pretrained checkpoints of a scene's prior backends, fetched into the weights cache (config
# weights.cache_dir, else $NSFF_WEIGHTS_DIR, else ~/.cache/nsff/weights) and checked by hash.
# A local rule: it runs where Snakemake runs, so cluster jobs never download. The marker lists
# the resolved paths; weights-free backends (dis, epipolar, sparse, none) list nothing and
# touch no network. See nsff_core/priors/weights.py.


rule weights:
    output:
        marker=SCENE.weights,
    log:
        SCENE.log("weights"),
    benchmark:
        SCENE.benchmark("weights")
    localrule: True
    conda:
        "../envs/video.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=120,
    params:
        # the scene's backend per prior stage (None = the stage's default)
        backends=lambda wc: {
            stage: stage_cfg(stage)(wc).get("backend") for stage in ("flow", "masks", "depth")
        }
        | (
            {"depth": stage_setting("depth", "dpt_model")(wc)}
            if stage_cfg("depth")(wc).get("backend") == "dpt"
            else {}
        ),
        # "" = $NSFF_WEIGHTS_DIR, else the user's cache
        cache_dir=weights_config().cache_dir or "",
        trust_on_first_use=weights_config().trust_on_first_use,
    script:
        "../workflow_scripts/weights.py"

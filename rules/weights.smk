# Pretrained checkpoints of a scene's prior backends, fetched into the weights cache (config
# weights.cache_dir, else $NSFF_WEIGHTS_DIR, else ~/.cache/nsff/weights) and checked by hash.
# A local rule: it runs where Snakemake runs, so cluster jobs never download. The marker lists
# the resolved paths; weights-free backends (dis, epipolar, sparse, none) list nothing and
# touch no network. See nsff_core/priors/weights/ and nsff_core/priors/backends.py.

from nsff_core.priors.backends import metric_request, weights_request


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
        # per prior stage, the scene's backend (None = the stage's default) or, for DPT, its
        # model: what the backend registry (nsff_core/priors/backends.py) says to fetch
        backends=lambda wc: weights_request(lambda stage: stage_cfg(stage)(wc)),
        # "" = $NSFF_WEIGHTS_DIR, else the user's cache
        cache_dir=weights_config().cache_dir or "",
        trust_on_first_use=weights_config().trust_on_first_use,
    script:
        "../workflow_scripts/weights.py"


# The LPIPS checkpoints of rule evaluate (AlexNet and the LPIPS v0.1 layers), resolved like
# those of the priors, in a marker of their own so that a new setting here reruns evaluate
# only. Optional: a file that cannot be had is listed as unavailable and evaluate goes on
# without LPIPS. It downloads only with eval.lpips_fetch: true; otherwise it takes what the
# cache (or torch hub's cache) holds and never opens the network.
rule weights_evaluate:
    output:
        marker=SCENE.weights_evaluate,
    log:
        SCENE.log("weights_evaluate"),
    benchmark:
        SCENE.benchmark("weights_evaluate")
    localrule: True
    conda:
        "../envs/video.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=120,
    params:
        # {"evaluate": "lpips"}: the metric backend of the registry (nsff_core/priors/backends.py)
        backends=metric_request(),
        # "" = $NSFF_WEIGHTS_DIR, else the user's cache
        cache_dir=weights_config().cache_dir or "",
        trust_on_first_use=weights_config().trust_on_first_use,
        download=stage_setting("eval", "lpips_fetch"),
    script:
        "../workflow_scripts/weights_evaluate.py"

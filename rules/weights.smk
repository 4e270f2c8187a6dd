# Pretrained checkpoints of a scene's prior backends, fetched into the weights cache (config
# weights.cache_dir, else $NSFF_WEIGHTS_DIR, else ~/.cache/nsff/weights) and checked by hash.
# A local rule: it runs where Snakemake runs, so cluster jobs never download. The marker lists
# the resolved paths; weights-free backends (dis, epipolar, sparse, none) list nothing and
# touch no network. See nsff_core/priors/weights.py.

from nsff_core.config import STAGES as _WEIGHTS_STAGES

WEIGHTS_STAGES = ("flow", "masks", "depth")


def weights_backends(wc):
    """Params function: the scene's backend per prior stage, e.g. {"flow": "raft", ...}."""
    backends = {}
    for stage in WEIGHTS_STAGES:
        values = _sheet.scene_stage_config(config, SCENES[wc.scene], stage)
        backends[stage] = values.get("backend", _WEIGHTS_STAGES[stage]().backend)
    return backends


def weights_cache_dir():
    """The configured weights cache directory ("" = $NSFF_WEIGHTS_DIR or the user's cache)."""
    return str((config.get("weights") or {}).get("cache_dir") or "")


rule weights:
    output:
        marker="results/{scene}/weights.json",
    log:
        "results/{scene}/logs/weights.log",
    benchmark:
        "results/{scene}/benchmarks/weights.tsv"
    localrule: True
    conda:
        "../envs/video.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=120,
    params:
        backends=weights_backends,
        cache_dir=weights_cache_dir(),
    script:
        "../workflow_scripts/weights.py"

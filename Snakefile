# NSFF workflow: from a monocular video of a dynamic scene to priors, a trained Neural Scene
# Flow Field and renders. See README.md; the layout is described in DESIGN.md.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/weights.smk"
include: "rules/frames.smk"
include: "rules/flow.smk"
include: "rules/masks.smk"
include: "rules/sfm.smk"
include: "rules/depth.smk"
include: "rules/diagnose.smk"
include: "rules/train.smk"
include: "rules/render.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


onerror:
    summary_after_error()


rule all:
    default_target: True
    input:
        all_targets(),


rule priors:
    input:
        [t for scene in SCENES for t in preprocess_targets(scene)],

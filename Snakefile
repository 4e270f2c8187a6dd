# NSFF workflow: from a monocular video of a dynamic scene to priors, a trained Neural Scene
# Flow Field and renders. See README.md; docs/architecture.md describes the rules and the layout
# of results/ (nsff_core/workflow/layout.py).

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


# the description at the top of `snakemake --report report.html` (items: rules/report.smk)
report: "report/workflow.rst"


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
include: "rules/export.smk"
include: "rules/report.smk"


onerror:
    summary_after_error()
    report_items_after_error(
        {scene: _sheet.scene_splits(config, SCENES[scene]) for scene in SCENES}, video_format()
    )


rule all:
    default_target: True
    input:
        all_targets(),
        # the items of `snakemake --report` (outputs of rule summary, see rules/report.smk)
        [BATCH.report_section(section) for section in REPORT_SECTIONS],


rule priors:
    input:
        [t for scene in SCENES for t in preprocess_targets(scene)],

# Tables over all scenes, and the items of the `snakemake --report` page. The summary waits for
# every job of every scene (the render splits that evaluate does not read included): a scene's
# status comes from the end lines of its job logs (see nsff_core/workflow/report.py), and a job still
# running has none.
#
# Snakemake refuses to build a report when a file marked for it is missing, and a failed scene
# lacks the outputs of its failed rule and every rule after it. So no per-rule output is marked:
# the summary job writes every item under results/report/ from whatever each scene has
# (nsff_core/workflow/report_page.py), and so does the onerror handler when a run stops on an error, so
# the report of a batch with a failed scene builds and shows that scene's status and log.

from nsff_core.workflow.report_page import SECTIONS as REPORT_SECTIONS
from nsff_core.workflow.report_page import items_after_error as report_items_after_error
from nsff_core.workflow.report_page import scene_inputs as scene_report_inputs


rule summary:
    input:
        evals=expand(SCENE.eval_metrics, scene=list(SCENES)),
        train=expand(SCENE.train_metrics, scene=list(SCENES)),
        renders=[video for scene in SCENES for video in render_targets(scene)],
        # the warnings column: a rerun of diagnose alone (new thresholds) updates the table
        diagnostics=expand(SCENE.diagnostics_json, scene=list(SCENES)),
        # the exports too: a scene's status counts their logs, and a fixed export reruns this
        exports=[path for scene in SCENES for path in export_targets(scene)],
        # what the report's items read besides (the checks' images, held-out views, frames)
        report=[
            path
            for scene in SCENES
            for path in scene_report_inputs(
                scene_layout(scene), _sheet.synthetic_preset(SCENES[scene]) is not None
            )
        ],
    output:
        csv=report(
            BATCH.summary_csv,
            caption="../report/summary_csv.rst",
            category="Batch",
        ),
        # one folder per section of the report, marked with its caption; category: the scene
        summary=report(
            directory(BATCH.report_section("summary")),
            patterns=["{name}.html"],
            caption="../report/summary.rst",
            category="Batch",
        ),
        status=report(
            directory(BATCH.report_section("status")),
            patterns=["{scene}/status.html"],
            caption="../report/status.rst",
            category="{scene}",
            subcategory="Status",
        ),
        renders=report(
            directory(BATCH.report_section("renders")),
            patterns=["{scene}/{split}.html"],
            caption="../report/renders.rst",
            category="{scene}",
            subcategory="Renders",
            labels={"split": "{split}"},
        ),
        priors=report(
            directory(BATCH.report_section("priors")),
            patterns=["{scene}/{image}.png"],
            caption="../report/priors.rst",
            category="{scene}",
            subcategory="Priors",
            labels={"image": "{image}"},
        ),
        training=report(
            directory(BATCH.report_section("training")),
            patterns=["{scene}/curves.png", "{scene}/training.html"],
            caption="../report/training.rst",
            category="{scene}",
            subcategory="Training",
        ),
        evaluation=report(
            directory(BATCH.report_section("evaluation")),
            patterns=["{scene}/metrics.html", "{scene}/views.png"],
            caption="../report/evaluation.rst",
            category="{scene}",
            subcategory="Evaluation",
        ),
    log:
        BATCH.log("summary"),
    benchmark:
        BATCH.benchmark("summary")
    conda:
        "../envs/nsff.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        scenes=list(SCENES),
        # the render splits of each scene: render logs of other splits are not counted
        splits={scene: _sheet.scene_splits(config, SCENES[scene]) for scene in SCENES},
        video_format=video_format(),
    script:
        "../workflow_scripts/summary.py"

"""The scene layout (nsff_core/workflow/layout.py): the one place that names the files under results/."""

from __future__ import annotations

import re

import pytest

from nsff_core.workflow.layout import (
    DIAGNOSTIC_IMAGES,
    EXPORTS,
    RENDER_PARTS,
    BatchLayout,
    SceneLayout,
)

from .conftest import REPO

#: every name of a scene, as the rules declared them before the layout existed
EXPECTED = {
    "source_video": "results/{scene}/source/video.mp4",
    "gt": "results/{scene}/gt/scene.npz",
    "weights": "results/{scene}/weights.json",
    "weights_evaluate": "results/{scene}/weights_evaluate.json",
    "frames": "results/{scene}/frames",
    "frames_json": "results/{scene}/frames.json",
    "flow_fw": "results/{scene}/flow_fw",
    "flow_bw": "results/{scene}/flow_bw",
    "flow_ok": "results/{scene}/flow_ok",
    "flow_holdout": "results/{scene}/flow_holdout",
    "sfm_masks": "results/{scene}/sfm_masks",
    "masks": "results/{scene}/masks",
    "sfm": "results/{scene}/sfm",
    "cameras": "results/{scene}/cameras.npz",
    "poses_bounds": "results/{scene}/poses_bounds.npy",
    "disp": "results/{scene}/disp",
    "diagnostics": "results/{scene}/diagnostics",
    "diagnostics_json": "results/{scene}/diagnostics/diagnostics.json",
    "train": "results/{scene}/train",
    "checkpoint": "results/{scene}/train/last.ckpt",
    "train_config": "results/{scene}/train/config.json",
    "train_metrics": "results/{scene}/train/metrics.csv",
    "train_running": "results/{scene}/train/running",
    "render": "results/{scene}/render",
    "camera_paths": "results/{scene}/paths",
    "eval_metrics": "results/{scene}/eval/metrics.json",
    "eval_novel": "results/{scene}/eval/novel",
    "logs": "results/{scene}/logs",
}


def test_every_name_of_the_pattern_layout():
    scene = SceneLayout.pattern()
    assert {k: getattr(scene, k) for k in EXPECTED} == EXPECTED
    assert scene.render_video("{split}", "mp4") == "results/{scene}/render/{split}.mp4"
    assert (
        scene.render_video("bullet7.5", "gif", "depth")
        == "results/{scene}/render/bullet7.5_depth.gif"
    )
    assert scene.render_frames("test") == "results/{scene}/render/test"
    assert scene.camera_path("orbit") == "results/{scene}/paths/orbit.npz"
    assert scene.log("render_{split}") == "results/{scene}/logs/render_{split}.log"
    assert scene.benchmark("train") == "results/{scene}/benchmarks/train.tsv"
    assert scene.diagnostic_image("depth") == "results/{scene}/diagnostics/depth_vs_sfm.png"
    assert [scene.export(n) for n in EXPORTS] == [f"results/{{scene}}/export/{n}" for n in EXPORTS]


def test_names_are_distinct_and_inside_the_scene_folder():
    scene = SceneLayout.of("tiny", "/tmp/res")
    names = [getattr(scene, k) for k in EXPECTED]
    names += [scene.render_video("test", "mp4", p) for p in (None, *RENDER_PARTS)]
    names += [scene.diagnostic_image(r) for r in DIAGNOSTIC_IMAGES]
    names += [scene.export(n) for n in EXPORTS]
    assert len(set(names)) == len(names)
    assert all(n.startswith("/tmp/res/tiny/") for n in names)


def test_unknown_parts_are_refused():
    scene = SceneLayout.of("a")
    with pytest.raises(ValueError, match="render part"):
        scene.render_video("test", "mp4", "colour")
    with pytest.raises(ValueError, match="unknown export"):
        scene.export("model.ckpt")
    with pytest.raises(KeyError):
        scene.diagnostic_image("histogram")


def test_batch_layout():
    batch = BatchLayout()
    assert batch.summary_csv == "results/summary.csv"
    assert batch.report_section("renders") == "results/report/renders"
    assert (batch.log("summary"), batch.benchmark("summary")) == (
        "results/logs/summary.log",
        "results/benchmarks/summary.tsv",
    )
    assert batch.scene("demo") == SceneLayout("results/demo")


def test_the_rules_and_the_report_take_their_paths_from_the_layout():
    """No path under results/ is spelled out in the rules, the Snakefile or the report modules
    (comments aside): they all go through nsff_core/workflow/layout.py."""
    files = [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]
    files += [REPO / "nsff_core" / "workflow" / n for n in ("report.py", "report_page.py")]
    spelled = [
        (f.name, line.strip())
        for f in files
        for line in f.read_text().splitlines()
        if re.search(r"""["'](results/|\{scene_dir\}/|results["'])""", line.split("#")[0])
    ]
    assert spelled == []

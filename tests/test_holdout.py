"""Held-out frames (eval.holdout_every): which frames, their flow, training data without them,
their renders at fractional model times, their scores beside the nearest-frame baseline."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from nsff_core.config import FlowConfig, TrainConfig
from nsff_core.errors import CorruptFileError, StageError
from nsff_core.holdout import (
    held_out_frames,
    model_times,
    nearest_training_frame,
    source_frame_count,
    training_frames,
)
from nsff_core.model import io

TINY = dict(width=16, depth=2, time_dim=4, num_samples=8, batch_size=32, steps_per_epoch=5)


def test_held_out_frames_never_the_first_or_last():
    assert held_out_frames(24, 2).tolist() == list(range(1, 23, 2))
    assert held_out_frames(24, 4).tolist() == [3, 7, 11, 15, 19]  # 23 is the last frame
    assert held_out_frames(10, 0).size == 0
    kept = training_frames(12, 3)
    assert kept.tolist() == [0, 1, 3, 4, 6, 7, 9, 10, 11]
    assert sorted(kept.tolist() + held_out_frames(12, 3).tolist()) == list(range(12))


@pytest.mark.parametrize("n, every, needle", [(10, 1, "at least 2"), (3, 3, "at most 2")])
def test_bad_holdout_is_refused(n, every, needle):
    with pytest.raises(ValueError, match=needle):
        held_out_frames(n, every)


def test_model_times_and_nearest_frame():
    ids = [0, 1, 3, 4, 6]
    np.testing.assert_allclose(model_times([0, 2, 3, 5, 5.5, 6], ids), [0, 1.5, 2, 3.5, 3.75, 4])
    np.testing.assert_allclose(model_times([2.5], None), [2.5])
    assert source_frame_count(ids, 5) == 7 and source_frame_count(None, 5) == 5
    assert nearest_training_frame(2, [1, 3]) == 1  # a tie: the earlier frame
    assert nearest_training_frame(5, [0, 4, 9]) == 4


def _noisy_copy(src, dst, frames):
    """``src``'s frames in ``dst`` with ``frames`` replaced by noise."""
    shutil.copytree(src, dst)
    rng = np.random.default_rng(0)
    for i in frames:
        p = dst / io.frame_name(int(i))
        io.write_image(p, rng.integers(0, 256, io.read_image(p).shape, dtype=np.uint8))


def test_holdout_flow_links_training_frames_and_ignores_the_held_out_ones(tiny_scene_dir, tmp_path):
    from nsff_core.priors.flow import (
        HOLDOUT_JSON,
        compute_holdout_flow,
        dis_pair,
        make_flow_backend,
    )

    # one DIS run per pair, so that a pair's flow is exactly that of its two images
    cfg = FlowConfig(dis_predict=False)
    compute_holdout_flow(tiny_scene_dir / "frames", tmp_path / "a", cfg, 3, scene="tiny")
    facts = json.loads((tmp_path / "a" / HOLDOUT_JSON).read_text())
    assert facts == {
        "holdout_every": 3,
        "num_frames": 12,
        "frame_ids": training_frames(12, 3).tolist(),
    }
    assert len(list((tmp_path / "a" / "flow_fw").glob("*.flo"))) == 8
    # pair 1 links frames 1 and 3: the flow of those two images, whatever frame 2 shows
    frames = [io.read_image(p) for p in io.list_frames(tiny_scene_dir / "frames")]
    fw, _ = dis_pair(make_flow_backend(cfg), frames[1], frames[3], frames[1], frames[3], cfg)
    np.testing.assert_allclose(io.read_flo(tmp_path / "a" / "flow_fw" / "00001.flo"), fw, atol=1e-5)
    # the held-out frames are never read, also by the default's predictions from neighbouring
    # pairs (which span the gaps they leave)
    cfg = FlowConfig()
    assert cfg.dis_predict
    compute_holdout_flow(tiny_scene_dir / "frames", tmp_path / "a2", cfg, 3, scene="tiny")
    _noisy_copy(tiny_scene_dir / "frames", tmp_path / "noisy", held_out_frames(12, 3))
    compute_holdout_flow(tmp_path / "noisy", tmp_path / "b", cfg, 3, scene="tiny")
    for j in range(8):
        a = io.read_flo(tmp_path / "a2" / "flow_fw" / io.frame_name(j, ".flo"))
        b = io.read_flo(tmp_path / "b" / "flow_fw" / io.frame_name(j, ".flo"))
        np.testing.assert_array_equal(a, b)
    with pytest.raises(StageError, match="at most 11"):
        compute_holdout_flow(tiny_scene_dir / "frames", tmp_path / "c", cfg, 12, scene="tiny")
    assert not (tmp_path / "c").exists()


@pytest.fixture(scope="module")
def holdout_scene(tiny_scene_dir, tmp_path_factory):
    """The tiny scene with flow_holdout for holdout_every 3 (held out: frames 2, 5, 8)."""
    from nsff_core.priors.flow import compute_holdout_flow

    d = tmp_path_factory.mktemp("holdout") / "scene"
    shutil.copytree(tiny_scene_dir, d)
    compute_holdout_flow(d / "frames", d / "flow_holdout", FlowConfig(), 3, scene="tiny")
    return d


def test_training_data_holds_no_trace_of_the_held_out_frames(holdout_scene, tmp_path):
    from nsff_core.workflow.stages.scene import load_scene

    full = load_scene(holdout_scene, "tiny")
    data = load_scene(holdout_scene, "tiny", holdout_every=3)
    kept = training_frames(12, 3)
    assert data.num_frames == 9 and data.frame_ids.tolist() == kept.tolist()
    assert full.frame_ids.tolist() == list(range(12))
    np.testing.assert_array_equal(data.rgb.numpy(), full.rgb.numpy()[kept])
    np.testing.assert_array_equal(data.dynamic.numpy(), full.dynamic.numpy()[kept])
    # frames 0 -> 1 are neighbours in both (the same field but for the few pixels where the
    # backward run's prediction, taken from pair 1, differs); training pair 1 (frames 1 -> 3)
    # is not pair 1
    same = np.abs(data.flow_fw[0].numpy() - full.flow_fw[0].numpy()).max(-1) < 1e-4
    assert same.mean() > 0.97
    assert not np.allclose(data.flow_fw[1].numpy(), full.flow_fw[1].numpy())
    # the held-out frames' priors are not read at all: garbage there changes nothing
    d = tmp_path / "scene"
    shutil.copytree(holdout_scene, d)
    for i in held_out_frames(12, 3):
        (d / "disp" / io.frame_name(int(i), ".npy")).unlink()
        (d / "masks" / io.frame_name(int(i))).unlink()
    again = load_scene(d, "tiny", holdout_every=3)
    np.testing.assert_array_equal(again.disp.numpy(), data.disp.numpy())
    assert again.near_depth == pytest.approx(data.near_depth)
    # a flow_holdout of another holdout_every is refused, naming the rule that writes it
    with pytest.raises(CorruptFileError, match="flow_holdout"):
        load_scene(d, "tiny", holdout_every=2)


@pytest.fixture(scope="module")
def holdout_ckpt(holdout_scene, tmp_path_factory):
    from nsff_core.workflow.stages.train import train_scene

    out = tmp_path_factory.mktemp("train_holdout")
    cfg = TrainConfig(**TINY, max_steps=2)
    return train_scene(holdout_scene, out, cfg, scene="tiny", holdout_every=3)


@pytest.mark.stage
def test_held_out_frames_are_rendered_between_their_neighbours_and_scored(
    holdout_scene, holdout_ckpt, tmp_path, caplog
):
    from nsff_core.model.checkpoint import load_system
    from nsff_core.workflow.stages.evaluate import evaluate_scene
    from nsff_core.workflow.stages.render_split import render_split

    system = load_system(holdout_ckpt, "cpu")
    assert system.meta.num_frames == 9
    assert list(system.meta.frame_ids) == training_frames(12, 3).tolist()
    facts = json.loads((holdout_ckpt.parent / "config.json").read_text())
    assert facts["holdout_every"] == 3 and facts["num_frames"] == 9
    cams = holdout_scene / "cameras.npz"
    with caplog.at_level("INFO"):
        render_split(holdout_ckpt, cams, "test", tmp_path / "render", scene="tiny")
    assert "3 of 12 frames at fractional times" in caplog.text
    assert len(io.list_frames(tmp_path / "render" / "test")) == 12
    out = tmp_path / "eval" / "metrics.json"
    result = evaluate_scene(
        holdout_ckpt,
        cams,
        holdout_scene / "frames",
        holdout_scene / "masks",
        tmp_path / "render" / "test",
        out,
        scene="tiny",
        holdout_every=3,
    )
    assert result["test"]["frames"] == 9
    held = result["holdout"]
    assert held["every"] == 3 and held["frames"] == 3
    assert held["names"] == ["00002.png", "00005.png", "00008.png"]
    assert held["baseline"]["nearest"] == [1, 4, 7]
    # the baseline is exactly the nearest frame's score against the held-out frame
    from nsff_core.model.metrics import psnr

    frames = [io.read_image(p) / 255.0 for p in io.list_frames(holdout_scene / "frames")]
    want = np.mean([psnr(frames[j], frames[i]) for i, j in ((2, 1), (5, 4), (8, 7))])
    assert held["baseline"]["mean"]["psnr"] == pytest.approx(want, rel=1e-6)
    assert np.isfinite(held["mean"]["psnr"])
    on_disk = json.loads(out.read_text())
    assert on_disk["holdout"]["frames"] == 3
    # and into summary.csv
    from nsff_core.workflow.report import write_summary

    scene_dir = tmp_path / "results" / "tiny"
    (scene_dir / "eval").mkdir(parents=True)
    shutil.copy(out, scene_dir / "eval" / "metrics.json")
    write_summary(["tiny"], tmp_path / "summary.csv", tmp_path / "results")
    row = pd.read_csv(tmp_path / "summary.csv").iloc[0]
    assert row["holdout_psnr"] == pytest.approx(held["mean"]["psnr"], abs=1e-3)
    assert row["holdout_baseline_psnr"] == pytest.approx(want, abs=1e-3)


@pytest.mark.stage
def test_a_render_time_past_the_source_video_is_refused(holdout_scene, holdout_ckpt, tmp_path):
    from nsff_core.workflow.stages.render_split import render_split

    cams = holdout_scene / "cameras.npz"
    with pytest.raises(StageError, match="after the last frame"):
        render_split(holdout_ckpt, cams, "bullet11.5", tmp_path, scene="tiny")
    # 11 is the source video's last frame (the model has 9 frames): allowed
    summary = render_split(holdout_ckpt, cams, "bullet10.5", tmp_path, scene="tiny")
    assert summary["frames"] == 60


def test_a_video_too_short_to_hold_out_a_frame():
    with pytest.raises(ValueError, match="too short"):
        held_out_frames(2, 2)

"""Training: a two-step smoke run on a preprocessed tiny scene, checkpoints and resumption."""

import csv

import numpy as np
import pytest
import torch

from nsff_core.config import TrainConfig
from nsff_core.model.checkpoint import load_checkpoint
from nsff_core.workflow.stages.scene import load_scene

pytestmark = pytest.mark.stage

TINY = dict(width=32, depth=2, time_dim=8, num_samples=16, batch_size=64, steps_per_epoch=10)


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_load_scene_matches_the_preprocessing(tiny_scene_dir):
    data = load_scene(tiny_scene_dir, scene="tiny")
    assert data.num_frames == 12 and data.hw == (90, 160)
    assert data.rgb.shape == (12, 90, 160, 3) and data.disp.shape == (12, 90, 160)
    assert not data.flow_fw_valid[-1].any() and not data.flow_bw_valid[0].any()
    assert data.flow_fw_valid[:-1].float().mean() > 0.5
    assert data.near_depth > 0


def test_two_steps_then_resume(tiny_scene_dir, tmp_path):
    from nsff_core.workflow.stages.train import train_scene

    out = tmp_path / "train"
    last = train_scene(tiny_scene_dir, out, TrainConfig(**TINY, max_steps=2), scene="tiny")
    assert last == out / "last.ckpt" and last.exists()
    assert (out / "config.json").exists()
    rows = _rows(out / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [0, 1]
    for r in rows:
        total = float(r["loss/total"])
        assert total == total and abs(total) < 1e3  # finite
    ckpt = load_checkpoint(last)
    assert ckpt["global_step"] == 2
    first = {k: v.clone() for k, v in ckpt["state_dict"].items()}

    # a rerun with a larger budget resumes at step 2 instead of starting again
    train_scene(tiny_scene_dir, out, TrainConfig(**TINY, max_steps=4), scene="tiny")
    ckpt = load_checkpoint(last)
    assert ckpt["global_step"] == 4
    steps = [int(r["step"]) for r in _rows(out / "metrics.csv")]
    assert steps == [0, 1, 2, 3], "metrics.csv keeps the steps before the resume"
    changed = [k for k, v in ckpt["state_dict"].items() if not torch.equal(v, first[k])]
    assert changed, "training steps update the weights"
    assert ckpt["pixel_sampler"]["previous"] is not None, "the ray stream's state is kept"
    assert not (out / "running").exists()

    # the same budget again: nothing left to train, the finished run and its metrics stay
    train_scene(tiny_scene_dir, out, TrainConfig(**TINY, max_steps=4), scene="tiny")
    assert load_checkpoint(last)["global_step"] == 4
    assert [int(r["step"]) for r in _rows(out / "metrics.csv")] == [0, 1, 2, 3]


def test_an_interrupted_run_resumes_and_other_settings_restart(tiny_scene_dir, tmp_path):
    from nsff_core.workflow.stages.train import train_scene

    out = tmp_path / "train"
    train_scene(tiny_scene_dir, out, TrainConfig(**TINY, max_steps=3), scene="tiny")
    # simulate a job killed after step 3: its files are still in running/, no outputs exist
    (out / "running").mkdir()
    for name in ("last.ckpt", "config.json", "metrics.csv"):
        (out / name).rename(out / "running" / name)
    train_scene(tiny_scene_dir, out, TrainConfig(**TINY, max_steps=5), scene="tiny")
    ckpt = load_checkpoint(out / "last.ckpt")
    assert ckpt["global_step"] == 5
    assert [int(r["step"]) for r in _rows(out / "metrics.csv")] == [0, 1, 2, 3, 4]
    # a different model is not resumed from the old checkpoint
    other = dict(TINY, width=16)
    train_scene(tiny_scene_dir, out, TrainConfig(**other, max_steps=2), scene="tiny")
    ckpt = load_checkpoint(out / "last.ckpt")
    assert ckpt["global_step"] == 2


def test_the_checkpoint_reloads(tiny_scene_dir, tmp_path):
    from nsff_core.model.system import NSFFSystem
    from nsff_core.workflow.stages.train import train_scene

    last = train_scene(tiny_scene_dir, tmp_path, TrainConfig(**TINY, max_steps=1), scene="tiny")
    system = NSFFSystem.load_from_checkpoint(last, map_location="cpu")
    assert system.dynamic_field.num_frames == 12
    assert system.meta.normalization.scale > 0
    o = torch.zeros(4, 3)
    d = torch.tensor([[0.0, 0.0, 2.0]]).expand(4, 3)
    with torch.inference_mode():
        img = system.render(o, d, torch.zeros(4, dtype=torch.long), training=False).image
    assert img.rgb.shape == (4, 3) and torch.isfinite(img.rgb).all()


def test_hard_sampling_weights_follow_the_error_and_are_checkpointed(tiny_scene_dir, tmp_path):
    from nsff_core.model.system import NSFFSystem
    from nsff_core.workflow.stages.train import train_scene

    cfg = TrainConfig(**TINY, max_steps=4, hard_sampling=True, hard_sampling_every=2)
    last = train_scene(tiny_scene_dir, tmp_path, cfg, scene="tiny")
    ckpt = load_checkpoint(last)
    w = ckpt["state_dict"]["hard_weights"]
    assert w.shape == (12, 90 * 160)
    assert not torch.all(w == 1), "the weights were refreshed from the SSIM maps"
    system = NSFFSystem.load_from_checkpoint(last, map_location="cpu")
    assert torch.equal(system.hard_weights, w)

    # by hand: a frame predicted exactly gets the floor weight, a wrong one a high weight
    data = load_scene(tiny_scene_dir, scene="tiny")
    system.last_rgb[0] = data.rgb[0].reshape(-1, 3)
    system.last_rgb[1] = 1.0 - data.rgb[1].reshape(-1, 3)
    system.update_hard_weights(data.rgb)
    assert torch.allclose(system.hard_weights[0], torch.full((90 * 160,), 0.01), atol=1e-4)
    assert system.hard_weights[1].mean() > 0.5


def test_error_sampling_keeps_tile_errors_and_hands_them_to_the_sampler(tiny_scene_dir, tmp_path):
    from nsff_core.errors import ConfigError
    from nsff_core.model.data import SamplerConfig
    from nsff_core.model.system import ERROR_SAMPLING_EVERY, NSFFSystem
    from nsff_core.workflow.stages.train import train_scene

    steps = ERROR_SAMPLING_EVERY + 2
    cfg = TrainConfig(**TINY, max_steps=steps, error_sampling=0.5, error_sampling_tile=10)
    last = train_scene(tiny_scene_dir, tmp_path, cfg, scene="tiny")
    errors = load_checkpoint(last)["state_dict"]["tile_error"]
    assert errors.shape == (12, 9 * 16)  # 90 x 160 frames in 10 px tiles
    drawn = errors >= 0
    # every step draws one frame; the tiles of the drawn frames have errors, the rest none
    assert 0 < drawn.any(1).sum() <= steps and drawn.float().mean() < 1
    assert torch.isfinite(errors).all() and (errors[drawn] > 0).all()
    system = NSFFSystem.load_from_checkpoint(last, map_location="cpu")
    assert torch.equal(system.tile_error, errors)

    class Recorder:
        weights = None

        def set_weights(self, w):
            self.weights = w

    system.pixel_sampler = Recorder()
    system.on_train_start()
    w = system.pixel_sampler.weights
    assert w.shape == (12, 90 * 160) and torch.allclose(w.sum(1), torch.ones(12))
    assert w.max() > 1.5 * w.min()  # the error share is not uniform
    with pytest.raises(ConfigError, match="hard_sampling"):
        SamplerConfig(error_share=0.5, hard_sampling=True)
    with pytest.raises(ConfigError, match="error_sampling"):
        SamplerConfig(error_share=1.0)


def test_short_training_reaches_a_psnr_floor(synthetic_scene, tmp_path):
    """A short run on the synthetic scene (planes field, exact priors) must learn the frames:
    full-frame PSNR at training views well above the mean-colour image."""
    import math

    import numpy as np

    from nsff_core.config import SyntheticConfig
    from nsff_core.model.data import SceneMeta, scene_data_from_arrays
    from nsff_core.model.rays import get_rays, rays_to_ndc
    from nsff_core.model.render import render_in_chunks
    from nsff_core.model.synthetic import render_scene
    from nsff_core.model.system import NSFFSystem
    from tests.fitting import fit_in_memory

    torch.manual_seed(0)
    scene = render_scene(SyntheticConfig(num_frames=6, width=96, height=54, novel_offsets=()))
    ok = np.ones(scene.flow_fw.shape[:3], bool)
    data = scene_data_from_arrays(
        scene.images, 1 / scene.depth, scene.flow_fw, scene.flow_bw, ok, ok,
        scene.dynamic_mask, scene.K, scene.c2w, float(scene.depth.min()),
    )  # fmt: skip
    cfg = TrainConfig(field="planes", num_samples=24, batch_size=512, grid_lr=0.02)
    system = NSFFSystem(cfg, SceneMeta(data.num_frames, data.K, data.c2w), 100)
    fit_in_memory(system, data, 250)
    h, w = data.hw
    psnrs, baseline = [], []
    with torch.inference_mode():
        for f in range(data.num_frames):
            o, d = get_rays(data.K, torch.as_tensor(data.c2w[f]).float(), (h, w))
            o, d = rays_to_ndc(o, d, data.K)
            tt = torch.full((h * w,), f, dtype=torch.long)
            img = render_in_chunks(
                lambda a, b, c: system.render(a, b, c, training=False).image, o, d, tt, 8192
            )
            gt = data.rgb[f].reshape(-1, 3)
            psnrs.append(-10 * math.log10(((img.rgb - gt) ** 2).mean().item()))
            baseline.append(-10 * math.log10(((gt.mean(0) - gt) ** 2).mean().item()))
    assert np.mean(psnrs) > 21.0, psnrs
    assert np.mean(psnrs) > np.mean(baseline) + 3.5, (psnrs, baseline)


def test_a_budget_inside_the_first_prior_period_is_warned_with_the_setting_that_fits():
    from nsff_core.workflow.stages.train import schedule_warning

    cfg = TrainConfig(max_steps=1100)  # epochs 50, lambda_geo decays every 10 epochs
    note = schedule_warning(cfg, spe=1382, total=1100)
    assert note is not None
    assert "epoch 0.80" in note and "steps_per_epoch to about 22" in note
    # two processes split each epoch: the suggestion counts before the split
    assert "about 44" in schedule_warning(cfg, spe=691, total=1100, world_size=2)
    # the whole schedule fits (22 x 50 = 1,100 steps): the priors decay at steps 220, 440, ...
    assert schedule_warning(cfg, spe=22, total=1100) is None
    # no depth/flow prior: nothing to decay
    assert schedule_warning(TrainConfig(lambda_geo_init=0.0), spe=1382, total=1100) is None


@pytest.mark.parametrize(
    ("record", "expected"),
    [({"depth": "sparse"}, False), ({"depth": "dpt"}, True), (None, True)],
    ids=["weights-free", "pretrained", "not-recorded"],
)
def test_disparity_movers_auto_follows_the_scenes_depth_backend(
    tiny_scene_dir, tmp_path, record, expected
):
    """``train.disparity_movers: auto`` leaves the movers out of the depth prior's term when
    rule weights recorded a weights-free depth backend for the scene, and keeps them for a
    pretrained one or where nothing is recorded; the decision is in config.json and in the
    checkpoint, so that a resume and a render see the same."""
    import json
    import shutil

    from nsff_core.model.checkpoint import load_system
    from nsff_core.workflow.stages.train import train_scene

    scene = tmp_path / "scene"
    shutil.copytree(tiny_scene_dir, scene)
    if record is not None:
        (scene / "weights.json").write_text(json.dumps({"backends": record, "weights": {}}))
    out = tmp_path / "train"
    cfg = TrainConfig(**TINY, max_steps=1)
    assert cfg.disparity_movers == "auto"
    last = train_scene(scene, out, cfg, scene="tiny")
    assert json.loads((out / "config.json").read_text())["train"]["disparity_movers"] is expected
    assert load_system(last, "cpu").disparity_movers is expected


@pytest.mark.parametrize(
    ("zoom", "expected"), [(None, 100.0), (0.25, 1.0)], ids=["measured", "forward"]
)
def test_static_last_delta_auto_follows_the_camera_path(
    tiny_scene_dir, tmp_path, monkeypatch, zoom, expected
):
    """``train.static_last_delta: auto`` keeps nsff_pl's backdrop (100) for the tiny scene,
    whose camera sweeps sideways (its measured zoom is under 6 %), and makes the last sample an
    ordinary one (1.0) when the far content grows by 25 % over the clip; the decision is in
    config.json and in the checkpoint, so that a resume and a render see the same."""
    import json

    from nsff_core.model.checkpoint import load_system
    from nsff_core.workflow.stages import scene as scene_stage
    from nsff_core.workflow.stages.train import train_scene

    measured = scene_stage.load_scene(tiny_scene_dir, scene="tiny").forward_zoom
    assert measured is not None and 0.0 <= measured < 0.06
    if zoom is not None:
        monkeypatch.setattr(scene_stage, "_forward_zoom", lambda c2w, depths: zoom)
    out = tmp_path / "train"
    cfg = TrainConfig(**TINY, max_steps=1)
    assert cfg.static_last_delta == "auto"
    last = train_scene(tiny_scene_dir, out, cfg, scene="tiny")
    assert json.loads((out / "config.json").read_text())["train"]["static_last_delta"] == expected
    assert load_system(last, "cpu").render_cfg.static_last_delta == expected


def test_static_last_delta_takes_a_number_or_auto():
    from nsff_core.config import resolve_static_last_delta
    from nsff_core.errors import ConfigError

    assert resolve_static_last_delta("auto", 0.13) == 1.0
    assert resolve_static_last_delta("auto", 0.06) == 1.0
    assert resolve_static_last_delta("auto", 0.03) == 100.0
    assert resolve_static_last_delta("auto", None) == 100.0
    assert resolve_static_last_delta(0.5, 0.13) == 0.5
    assert resolve_static_last_delta(100, None) == 100.0
    with pytest.raises(ConfigError, match="positive number or auto"):
        resolve_static_last_delta("far", 0.1)


def test_forward_zoom_of_the_synthetic_camera_paths():
    """The image-size change of a wall 10 m away: the 1.4 m dolly and the 1 m walk move towards
    it (14 % and 10 %), the sideways path and the arc (whose chord is sideways) do not."""
    from nsff_core.model.cameras import forward_zoom
    from nsff_core.model.synthetic import camera_path

    s = np.linspace(0, 1, 24)
    zoom = {
        name: forward_zoom(np.stack([camera_path(name, seed=8)(x) for x in s]), 10.0)
        for name in ("dolly", "walk", "sideways", "arc", "handheld")
    }
    assert zoom["dolly"] == pytest.approx(0.14, abs=0.005)
    assert 0.09 < zoom["walk"] < 0.11
    assert zoom["sideways"] < 0.01 and zoom["arc"] < 0.02 and zoom["handheld"] < 0.02
    assert forward_zoom(np.stack([camera_path("dolly")(x) for x in s]), 20.0) == pytest.approx(
        zoom["dolly"] / 2
    )
    with pytest.raises(ValueError, match="positive"):
        forward_zoom(np.eye(4)[None], 0.0)


def test_disparity_movers_takes_true_false_or_auto():
    from nsff_core.config import resolve_disparity_movers
    from nsff_core.errors import ConfigError

    assert resolve_disparity_movers("auto", True) is False
    assert resolve_disparity_movers("auto", False) is True
    assert resolve_disparity_movers("auto", None) is True
    assert resolve_disparity_movers(True, True) is True
    assert resolve_disparity_movers(False, False) is False
    with pytest.raises(ConfigError, match="true, false or auto"):
        resolve_disparity_movers("yes", True)

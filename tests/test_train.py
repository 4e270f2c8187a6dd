"""Training: a two-step smoke run on a preprocessed tiny scene, checkpoints and resumption."""

import csv

import pytest
import torch

from nsff_core.config import TrainConfig
from nsff_core.data import load_scene

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
    from nsff_core.train import train_scene

    out = tmp_path / "train"
    last = train_scene(tiny_scene_dir, out, TrainConfig(**TINY, max_steps=2), scene="tiny")
    assert last == out / "last.ckpt" and last.exists()
    assert (out / "config.json").exists()
    rows = _rows(out / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [0, 1]
    for r in rows:
        total = float(r["loss/total"])
        assert total == total and abs(total) < 1e3  # finite
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2
    first = {k: v.clone() for k, v in ckpt["state_dict"].items()}

    # a rerun with a larger budget resumes at step 2 instead of starting again
    train_scene(tiny_scene_dir, out, TrainConfig(**TINY, max_steps=4), scene="tiny")
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4
    steps = [int(r["step"]) for r in _rows(out / "metrics.csv")]
    assert steps == [0, 1, 2, 3], "metrics.csv keeps the steps before the resume"
    changed = [k for k, v in ckpt["state_dict"].items() if not torch.equal(v, first[k])]
    assert changed, "training steps update the weights"
    assert not (out / "running").exists()


def test_an_interrupted_run_resumes_and_other_settings_restart(tiny_scene_dir, tmp_path):
    from nsff_core.train import train_scene

    out = tmp_path / "train"
    train_scene(tiny_scene_dir, out, TrainConfig(**TINY, max_steps=3), scene="tiny")
    # simulate a job killed after step 3: its files are still in running/, no outputs exist
    (out / "running").mkdir()
    for name in ("last.ckpt", "config.json", "metrics.csv"):
        (out / name).rename(out / "running" / name)
    train_scene(tiny_scene_dir, out, TrainConfig(**TINY, max_steps=5), scene="tiny")
    ckpt = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 5
    assert [int(r["step"]) for r in _rows(out / "metrics.csv")] == [0, 1, 2, 3, 4]
    # a different model is not resumed from the old checkpoint
    other = dict(TINY, width=16)
    train_scene(tiny_scene_dir, out, TrainConfig(**other, max_steps=2), scene="tiny")
    ckpt = torch.load(out / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2


def test_the_checkpoint_reloads(tiny_scene_dir, tmp_path):
    from nsff_core.system import NSFFSystem
    from nsff_core.train import train_scene

    last = train_scene(tiny_scene_dir, tmp_path, TrainConfig(**TINY, max_steps=1), scene="tiny")
    system = NSFFSystem.load_from_checkpoint(last, map_location="cpu")
    assert system.dynamic_field.num_frames == 12
    assert system.hparams["normalization"]["scale"] > 0
    o = torch.zeros(4, 3)
    d = torch.tensor([[0.0, 0.0, 2.0]]).expand(4, 3)
    with torch.inference_mode():
        img = system.render(o, d, torch.zeros(4, dtype=torch.long), training=False).image()
    assert img.rgb.shape == (4, 3) and torch.isfinite(img.rgb).all()

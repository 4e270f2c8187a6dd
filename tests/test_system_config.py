"""The typed views of the train settings, the scene facts a checkpoint keeps (SceneMeta), and
checkpoints of the flat form written before SceneMeta."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from nsff_core.config import TrainConfig, to_dict
from nsff_core.errors import CorruptFileError
from nsff_core.model import train_views as views
from nsff_core.model.checkpoint import load_system, system_arguments
from nsff_core.model.data import FrameSampler, SamplerConfig, SceneMeta
from nsff_core.model.fields import FieldConfig
from nsff_core.model.fields_planes import PlaneFieldConfig
from nsff_core.model.losses import LossWeights
from nsff_core.model.rays import normalize_poses
from nsff_core.model.render import RenderConfig
from nsff_core.model.system import NSFFSystem

SMALL = TrainConfig(width=16, depth=2, time_dim=4, num_samples=8)


def _meta(n: int = 3, **kwargs) -> SceneMeta:
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, 0, 3] = np.linspace(0.0, 0.2, n)
    c2w_nsff, norm = normalize_poses(c2w, near_depth=1.5)
    K = [[40.0, 0.0, 23.5], [0.0, 40.0, 15.5], [0.0, 0.0, 1.0]]
    return SceneMeta(n, K, c2w_nsff, **{"hw": (32, 48), "normalization": norm, **kwargs})


def test_the_views_cut_the_train_settings():
    cfg = TrainConfig(
        depth=6,
        num_samples=32,
        noise_std=0.5,
        grid_levels=3,
        lambda_mask=0.1,
        grid_tv=2e-4,
        dynamic_sampling=0.25,
        seed=7,
        static_last_delta=0.05,
    )
    mlp = views.mlp_field_config(cfg)
    assert isinstance(mlp, FieldConfig) and mlp.skips == (3,) and mlp.width == cfg.width
    planes = views.plane_field_config(cfg, (1.5, 1.0))
    assert isinstance(planes, PlaneFieldConfig)
    assert (planes.levels, planes.extent) == (3, (1.5, 1.0))
    assert views.render_config(cfg) == RenderConfig(
        num_samples=32, noise_std=0.5, static_last_delta=0.05
    )
    weights = views.loss_weights(cfg)
    assert isinstance(weights, LossWeights) and weights.mask == 0.1
    assert weights.field_regularization == 0.0, "MLP fields have no regulariser"
    plane_weights = views.loss_weights(dataclasses.replace(cfg, field="planes"))
    assert plane_weights.field_regularization == 2e-4
    sampling = views.sampler_config(cfg, rank=2)
    assert sampling == SamplerConfig(
        batch_size=cfg.batch_size, seed=9, dynamic_share=0.25, hard_sampling=False
    )
    # every default of a sub-config is the TrainConfig default
    default = TrainConfig()
    assert views.mlp_field_config(default) == FieldConfig()
    assert views.plane_field_config(default) == PlaneFieldConfig()
    assert views.render_config(default) == RenderConfig()
    assert views.sampler_config(default) == SamplerConfig()


def test_the_sampler_from_its_config_draws_as_the_loose_one():
    masks = torch.zeros(3, 20, 30, dtype=torch.bool)
    masks[:, 5:9, 5:9] = True
    cfg = SamplerConfig(batch_size=64, seed=3, dynamic_share=0.25)
    a = FrameSampler.from_config(cfg, 3, (20, 30), masks)
    b = FrameSampler(3, (20, 30), 64, seed=3, dynamic=masks, dynamic_share=0.25)
    for _ in range(4):
        t = a.next_frame()
        assert t == b.next_frame()
        assert torch.equal(a.next_pixels(t), b.next_pixels(t))


def test_scene_meta_round_trips_through_plain_data():
    meta = _meta(4, frame_ids=(0, 2, 3, 5))
    d = meta.to_dict()
    assert isinstance(d["K"], list) and isinstance(d["c2w"][0], list)
    assert isinstance(d["normalization"]["matrix"], list)
    back = SceneMeta.from_dict(d)
    assert back.to_dict() == d
    assert back.frame_ids == (0, 2, 3, 5) and back.hw == (32, 48)
    assert back.K.dtype == np.float64 and back.c2w.shape == (4, 4, 4)
    with pytest.raises(ValueError, match="c2w"):
        SceneMeta(3, meta.K, meta.c2w)  # 4 poses for 3 frames
    with pytest.raises(TypeError):
        SceneMeta.from_dict({**d, "extra": 1})


def test_the_system_stores_plain_hyperparameters_and_takes_them_back():
    meta = _meta()
    system = NSFFSystem(SMALL, meta, 10)
    hp = dict(system.hparams)
    assert hp == {"cfg": to_dict(SMALL), "meta": meta.to_dict(), "steps_per_epoch": 10}
    again = NSFFSystem(**hp)  # as Lightning's load_from_checkpoint passes them
    assert again.cfg == SMALL and again.meta.to_dict() == meta.to_dict()
    assert torch.equal(again.P, system.P) and torch.equal(again.K, system.K)


def _save(system: NSFFSystem, hparams: dict, path) -> None:
    torch.save(
        {
            "state_dict": system.state_dict(),
            "hyper_parameters": hparams,
            "pytorch-lightning_version": pl.__version__,
        },
        path,
    )


@pytest.mark.parametrize("age", ["flat", "oldest"])
def test_a_checkpoint_of_the_flat_old_shape_still_loads(tmp_path, age):
    """Checkpoints from before SceneMeta kept the scene facts next to cfg; the oldest had no
    normalization, hw or frame_ids, and no train.grid_bounds."""
    torch.manual_seed(0)
    meta = _meta()
    system = NSFFSystem(SMALL, meta, 10)
    old = {"cfg": to_dict(SMALL), "steps_per_epoch": 10, **meta.to_dict()}
    if age == "oldest":
        for key in ("normalization", "hw", "frame_ids"):
            del old[key]
        del old["cfg"]["grid_bounds"]
    _save(system, old, tmp_path / "old.ckpt")
    loaded = load_system(tmp_path / "old.ckpt")
    assert loaded.meta.num_frames == 3 and np.array_equal(loaded.meta.K, meta.K)
    assert np.array_equal(loaded.meta.c2w, meta.c2w)
    if age == "flat":
        assert loaded.meta.to_dict() == meta.to_dict()
    else:
        assert loaded.meta.hw is None and loaded.meta.normalization is None
        assert loaded.cfg.grid_bounds == "ndc"
    o = torch.zeros(4, 3)
    d = torch.tensor([[0.0, 0.0, 2.0]]).expand(4, 3)
    t = torch.zeros(4, dtype=torch.long)
    system.eval()
    with torch.inference_mode():
        want = system.render(o, d, t, training=False).image.rgb
        got = loaded.render(o, d, t, training=False).image.rgb
    assert torch.equal(want, got)
    args = system_arguments(old)
    assert set(args) == {"cfg", "meta", "steps_per_epoch"}


def test_a_checkpoint_with_foreign_hyperparameters_is_corrupt(tmp_path):
    system = NSFFSystem(SMALL, _meta(), 10)
    _save(system, {**dict(system.hparams), "meta": {"num_frames": 3}}, tmp_path / "bad.ckpt")
    with pytest.raises(CorruptFileError, match="not a checkpoint of this model"):
        load_system(tmp_path / "bad.ckpt")

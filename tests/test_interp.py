"""Time interpolation by splatting (docs/method.md): limits dt -> 0 / 1, a moving blob, splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from nsff_core.model import io
from nsff_core.model.fields import (
    DynamicField,
    DynamicFieldOutput,
    FieldConfig,
    StaticField,
    StaticFieldOutput,
)
from nsff_core.model.interp import interpolate_rays, split_time
from nsff_core.model.rays import get_rays, projection_matrices, rays_to_ndc
from nsff_core.model.render import RenderConfig, render_rays

H, W = 24, 32
K = np.array([[30.0, 0.0, (W - 1) / 2], [0.0, 30.0, (H - 1) / 2], [0.0, 0.0, 1.0]])
IMAGE_KEYS = ("rgb", "depth", "static_rgb", "static_depth", "dynamic_rgb", "dynamicness")


def camera(offset=(0.0, 0.0, 0.0), hw=(H, W), K_render=K):
    """NDC rays and projection of a camera at ``offset`` in the NSFF world, looking along -z
    (NDC from ``K_render``: it is also the training camera)."""
    c2w = torch.eye(4)
    c2w[:3, 3] = torch.tensor(offset)
    o, d = get_rays(K_render, c2w, hw)
    o, d = rays_to_ndc(o, d, K_render)
    return o, d, projection_matrices(K_render, c2w)


def integer_render(static, dynamic, cfg, o, d, t):
    times = torch.full((o.shape[0],), t, dtype=torch.long)
    with torch.no_grad():
        return render_rays(static, dynamic, o, d, times, cfg, training=False)


def interp(static, dynamic, cfg, o, d, P, t, dt, hw=(H, W), K_ndc=K, **kw):
    with torch.no_grad():
        return interpolate_rays(
            static, dynamic, cfg, o, d, hw, P, torch.as_tensor(K_ndc).float(), t, dt, **kw
        )


def assert_images_close(a, b, atol):
    for k in IMAGE_KEYS:
        assert_close(getattr(a, k), getattr(b, k), atol=atol, rtol=0, msg=k)


def mlp_fields(flow_scale: float, seed: int = 0):
    """Small random MLP fields whose frames differ clearly (time codes and heads scaled up)."""
    torch.manual_seed(seed)
    fcfg = FieldConfig(width=16, depth=2, skips=(), time_dim=4, flow_scale=flow_scale)
    static, dynamic = StaticField(fcfg), DynamicField(fcfg, num_frames=3)
    with torch.no_grad():
        dynamic.time_embedding.weight.mul_(10.0)
        dynamic.heads.weight.mul_(5.0)
    return static.eval(), dynamic.eval(), RenderConfig(num_samples=16)


# --------------------------------------------------------------------------- limits and formula


def test_split_time():
    assert split_time(2.25, 4) == (2, 0.25)
    assert split_time(0, 4) == (0, 0.0)
    assert split_time(3.0, 4) == (3, 0.0)
    assert split_time(2.9999999, 4) == (3, 0.0)  # float noise snaps to the frame
    assert split_time(3.0000001, 4) == (3, 0.0)
    for bad in (-0.5, 3.5, float("nan")):
        with pytest.raises(ValueError, match="outside"):
            split_time(bad, 4)


def test_dt_to_zero_equals_integer_render_with_flow():
    static, dynamic, cfg = mlp_fields(flow_scale=0.2)
    o, d, P = camera(offset=(0.05, -0.02, 0.1))
    at_t = integer_render(static, dynamic, cfg, o, d, 1)
    at_t1 = integer_render(static, dynamic, cfg, o, d, 2)
    # the frames differ: the test can fail
    assert (at_t.image.rgb - at_t1.image.rgb).abs().max() > 0.02
    assert (at_t.scene_flow_fw.abs().amax(-1) > 0.02).float().mean() > 0.5  # and things move
    assert_images_close(interp(static, dynamic, cfg, o, d, P, 1, 0.0), at_t.image, atol=1e-5)
    assert_images_close(interp(static, dynamic, cfg, o, d, P, 1, 1e-4), at_t.image, atol=2e-3)


def test_dt_to_one_approaches_next_frame_without_motion():
    static, dynamic, cfg = mlp_fields(flow_scale=0.0)
    o, d, P = camera(offset=(0.05, -0.02, 0.1))
    at_t = integer_render(static, dynamic, cfg, o, d, 0).image
    at_t1 = integer_render(static, dynamic, cfg, o, d, 1).image
    assert (at_t.rgb - at_t1.rgb).abs().max() > 0.02
    assert_images_close(interp(static, dynamic, cfg, o, d, P, 0, 1e-4), at_t, atol=1e-4)
    assert_images_close(interp(static, dynamic, cfg, o, d, P, 0, 1 - 1e-4), at_t1, atol=1e-4)


def naive_blend(r0, r1, dt, grey):
    """Reference for a zero scene flow: per-plane blend of frames t and t+1, then a loop over the
    samples compositing front to back (docs/method.md, Time interpolation, step 4)."""
    n_rays, n_samples = r0.z.shape
    rgb, dyn_rgb = torch.zeros(n_rays, 3), torch.zeros(n_rays, 3)
    depth, dyn, acc = torch.zeros(n_rays), torch.zeros(n_rays), torch.zeros(n_rays)
    for s in range(n_samples):
        a_st, c_st = r0.static_alpha[:, s], r0.static_sample_rgb[:, s]
        a_fw, c_fw = r0.dynamic_alpha[:, s], r0.dynamic_sample_rgb[:, s]
        a_bw, c_bw = r1.dynamic_alpha[:, s], r1.dynamic_sample_rgb[:, s]
        dyn_colour = (1 - dt) * a_fw[:, None] * c_fw + dt * a_bw[:, None] * c_bw
        a_dyn = (1 - dt) * a_fw + dt * a_bw
        colour = dyn_colour + a_st[:, None] * c_st
        alpha = 1 - (1 - a_dyn) * (1 - a_st)
        rgb += (1 - acc)[:, None] * colour
        depth += (1 - acc) * alpha * r0.z[:, s]
        dyn_rgb += (1 - acc)[:, None] * dyn_colour
        dyn += (1 - acc) * a_dyn
        acc += (1 - acc) * alpha
    return rgb, depth, dyn_rgb + grey * (1 - dyn[:, None]), dyn


def test_zero_flow_matches_naive_composite_and_chunking():
    static, dynamic, cfg = mlp_fields(flow_scale=0.0, seed=1)
    o, d, P = camera(offset=(-0.03, 0.04, 0.0))
    r0 = integer_render(static, dynamic, cfg, o, d, 0)
    r1 = integer_render(static, dynamic, cfg, o, d, 1)
    out = interp(static, dynamic, cfg, o, d, P, 0, 0.3)
    rgb, depth, dyn_rgb, dyn = naive_blend(r0, r1, 0.3, cfg.dynamic_background)
    assert_close(out.rgb, rgb, atol=1e-5, rtol=0)
    assert_close(out.depth, depth, atol=1e-5, rtol=0)
    assert_close(out.dynamic_rgb, dyn_rgb, atol=1e-5, rtol=0)
    assert_close(out.dynamicness, dyn, atol=1e-5, rtol=0)
    assert_close(out.static_rgb, r0.image.static_rgb, atol=1e-5, rtol=0)
    # chunking over planes and rays changes nothing
    for kw in (dict(plane_chunk=1), dict(plane_chunk=5, chunk=7), dict(plane_chunk=16)):
        assert_images_close(interp(static, dynamic, cfg, o, d, P, 0, 0.3, **kw), out, atol=1e-5)


def test_needs_next_frame():
    static, dynamic, cfg = mlp_fields(flow_scale=0.0)
    o, d, P = camera()
    with pytest.raises(ValueError, match="frames 2 and 3"):
        interp(static, dynamic, cfg, o, d, P, 2, 0.5)


# --------------------------------------------------------------------------- a moving blob


class WallStaticField(nn.Module):
    """Grey opaque wall beyond NDC z = 0.8, empty in front."""

    def forward(self, x, d=None):
        raw = torch.where(x[..., 2] > 0.8, 20.0, -20.0)
        return StaticFieldOutput(raw_sigma=raw, rgb=torch.full_like(x, 0.3))


class BlobDynamicField(nn.Module):
    """An opaque orange Gaussian blob (NDC) centred at ``centres[t]`` with the exact scene flow:
    every point moves by centres[t +- 1] - centres[t] (``local``: only near the blob, zero flow
    elsewhere, as a trained field's minimal-flow prior prefers)."""

    def __init__(self, centres, scale=(0.08, 0.08, 0.15), local=False):
        super().__init__()
        self.register_buffer("centres", torch.tensor(centres, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(scale))
        self.num_frames = len(centres)
        self.local = local

    def at_times(self, x, t):
        n = self.num_frames
        c = self.centres[t][:, None, :]  # (R, 1, 3)
        g = torch.exp(-0.5 * (((x - c) / self.scale) ** 2).sum(-1))
        fw = (self.centres[(t + 1).clamp(max=n - 1)] - self.centres[t])[:, None, :]
        bw = (self.centres[(t - 1).clamp(min=0)] - self.centres[t])[:, None, :]
        window = (g > 1e-4).float()[..., None] if self.local else torch.ones_like(x[..., :1])
        return DynamicFieldOutput(
            raw_sigma=80.0 * g - 10.0,
            rgb=torch.tensor([1.0, 0.5, 0.1]).expand_as(x),
            scene_flow_fw=fw * window,
            scene_flow_bw=bw * window,
        )


def centroid(weights, hw):
    """(x, y) pixel centroid of an (H*W,) weight image."""
    wgt = weights.reshape(hw)
    ys, xs = torch.meshgrid(
        torch.arange(hw[0], dtype=torch.float32),
        torch.arange(hw[1], dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([(wgt * xs).sum(), (wgt * ys).sum()]) / wgt.sum()


@pytest.mark.parametrize("local", [False, True])
def test_moving_blob_lands_halfway(local):
    hw = (48, 64)
    K_big = np.array([[50.0, 0.0, 31.5], [0.0, 50.0, 23.5], [0.0, 0.0, 1.0]])
    # the blob moves sideways at NDC z = 0 (world depth 2): 17.6 px right, 2.4 px down
    dynamic = BlobDynamicField([(-0.3, 0.1, 0.0), (0.25, 0.0, 0.0)], local=local)
    static, cfg = WallStaticField(), RenderConfig(num_samples=32)
    o, d, P = camera(offset=(0.05, -0.03, 0.0), hw=hw, K_render=K_big)
    at_t = integer_render(static, dynamic, cfg, o, d, 0).image.dynamicness
    at_t1 = integer_render(static, dynamic, cfg, o, d, 1).image.dynamicness
    c0, c1 = centroid(at_t, hw), centroid(at_t1, hw)
    assert_close(c1 - c0, torch.tensor([17.6, 2.4]), atol=0.2, rtol=0)
    for dt in (0.5, 0.3):
        out = interp(static, dynamic, cfg, o, d, P, 0, dt, hw=hw, K_ndc=K_big)
        assert (centroid(out.dynamicness, hw) - (c0 + dt * (c1 - c0))).abs().max() < 0.25
        # one opaque blob of the same size, not two faded ghosts at t and t + 1
        assert out.dynamicness.max() > 0.95
        if dt == 0.5:  # the blob is ~9 px from both ends
            assert out.dynamicness[at_t.argmax()] < 0.05 and out.dynamicness[at_t1.argmax()] < 0.05
        assert 0.9 < out.dynamicness.sum() / at_t.sum() < 1.1
        # with its colour where it is, and the wall elsewhere
        peak = out.dynamicness.argmax()
        assert_close(out.rgb[peak], torch.tensor([1.0, 0.5, 0.1]), atol=0.01, rtol=0)
        assert_close(out.rgb[0], torch.tensor([0.3, 0.3, 0.3]), atol=1e-3, rtol=0)


# --------------------------------------------------------------------------- render splits


@pytest.fixture(scope="module")
def untrained_scene(tmp_path_factory):
    """cameras.npz of 4 frames (48x32) and a checkpoint of an untrained tiny NSFFSystem."""
    import pytorch_lightning as pl

    from nsff_core.config import TrainConfig
    from nsff_core.model.data import SceneMeta
    from nsff_core.model.rays import normalize_poses
    from nsff_core.model.system import NSFFSystem

    d = tmp_path_factory.mktemp("interp_scene")
    n, hw = 4, (32, 48)
    K_cam = np.array([[40.0, 0.0, 23.5], [0.0, 40.0, 15.5], [0.0, 0.0, 1.0]])
    c2w = np.tile(np.eye(4), (n, 1, 1))  # OpenCV axes, looking along +z, moving right
    c2w[:, 0, 3] = np.linspace(0.0, 0.3, n)
    io.write_cameras(
        d / "cameras.npz", c2w, K_cam, hw, np.full(n, 2.0), np.full(n, 20.0), ["a"] * n
    )
    c2w_nsff, norm = normalize_poses(c2w, near_depth=1.5)
    cfg = TrainConfig(width=16, depth=2, time_dim=4, num_samples=8)
    torch.manual_seed(0)
    system = NSFFSystem(cfg, SceneMeta(n, K_cam, c2w_nsff, normalization=norm), 10)
    ckpt = d / "untrained.ckpt"
    torch.save(
        {
            "state_dict": system.state_dict(),
            "hyper_parameters": dict(system.hparams),
            "pytorch-lightning_version": pl.__version__,
        },
        ckpt,
    )
    return d, ckpt, c2w, K_cam, hw


def test_render_fixview_interp_split(untrained_scene, tmp_path):
    from nsff_core.workflow.stages.render_split import render_split

    d, ckpt, *_ = untrained_scene
    split = "test_fixview1_interp2"
    summary = render_split(ckpt, d / "cameras.npz", split, tmp_path, chunk=256, scene="s")
    assert summary["frames"] == (4 - 1) * 2 + 1
    frames = io.list_frames(tmp_path / split)
    assert len(frames) == 7 and io.read_image(frames[0]).shape == (32, 48, 3)
    for suffix in ("", "_depth", "_static", "_dynamic"):
        assert (tmp_path / f"{split}{suffix}.mp4").stat().st_size > 0
    # the integer times of the split are the ordinary renders of interp0
    render_split(ckpt, d / "cameras.npz", "test_fixview1_interp0", tmp_path, chunk=256)
    ints = io.list_frames(tmp_path / "test_fixview1_interp0")
    for k in range(4):
        assert np.array_equal(io.read_image(frames[2 * k]), io.read_image(ints[k]))


def test_render_camera_path_with_fractional_times(untrained_scene, tmp_path):
    from nsff_core.model.paths import CameraPath
    from nsff_core.workflow.stages.render_split import render_split

    d, ckpt, c2w, K_cam, hw = untrained_scene
    K_half = K_cam.copy()
    K_half[:2] *= 0.5  # render at half the training resolution
    K_half[:2, 2] = [(hw[1] / 2 - 1) / 2, (hw[0] / 2 - 1) / 2]
    times = np.array([0.5, 1.25, 3.0])
    path = CameraPath(c2w=c2w[[0, 1, 3]], K=K_half, hw=(16, 24), times=times, name="slowmo")
    path.save(d / "paths" / "slowmo.npz")
    render_split(ckpt, d / "cameras.npz", "path_slowmo", tmp_path, paths_dir=d / "paths")
    imgs = [io.read_image(p) for p in io.list_frames(tmp_path / "path_slowmo")]
    assert len(imgs) == 3 and imgs[0].shape == (16, 24, 3)
    assert all((tmp_path / f"path_slowmo{s}.mp4").exists() for s in ("", "_depth", "_dynamic"))

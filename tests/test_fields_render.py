"""Fields and volume rendering: hand-computed composites, shapes, bounds and the warped renders."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch.testing import assert_close

from nsff_core.errors import ConfigError
from nsff_core.model.fields import DynamicField, FieldConfig, PositionalEncoding, StaticField
from nsff_core.model.render import (
    RenderConfig,
    alphas_from_sigma,
    composite_weights,
    disocclusion,
    neighbour_frames,
    over_background,
    ray_deltas,
    render_in_chunks,
    render_rays,
    rendered_correspondences,
    sample_along_rays,
    transmittance_after,
    volume_weights,
)

NUM_FRAMES = 5
TINY = FieldConfig(width=16, depth=3, skips=(2,), xyz_freqs=3, dir_freqs=2, time_dim=4)
DETERMINISTIC = RenderConfig(num_samples=12, perturb=False, noise_std=0.0)


def _fields(cfg: FieldConfig = TINY, seed: int = 0) -> tuple[StaticField, DynamicField]:
    torch.manual_seed(seed)
    return StaticField(cfg), DynamicField(cfg, NUM_FRAMES)


def _rays(num_rays: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rays_o = torch.rand(num_rays, 3, generator=g) * 0.4 - 0.2
    rays_o[:, 2] = -1.0  # NDC origins lie on the near plane z' = -1
    rays_d = torch.rand(num_rays, 3, generator=g) * 0.2 - 0.1
    rays_d[:, 2] = 2.0
    return rays_o, rays_d


# --- positional encoding and fields -----------------------------------------------------------


def test_positional_encoding_values_and_size():
    enc = PositionalEncoding(2)
    p = torch.tensor([[0.5, -1.0, 2.0]])
    expected = torch.tensor(
        [[0.5, -1.0, 2.0]
         + [math.sin(0.5), math.sin(-1.0), math.sin(2.0)]
         + [math.cos(0.5), math.cos(-1.0), math.cos(2.0)]
         + [math.sin(1.0), math.sin(-2.0), math.sin(4.0)]
         + [math.cos(1.0), math.cos(-2.0), math.cos(4.0)]]
    )  # fmt: skip
    assert_close(enc(p), expected)
    assert enc.out_dim == 15
    assert PositionalEncoding(10).out_dim == 63  # nsff_pl xyz
    assert PositionalEncoding(4).out_dim == 27  # nsff_pl view direction
    assert PositionalEncoding(4, include_input=False).out_dim == 24


def test_field_config_validation():
    with pytest.raises(ConfigError):
        FieldConfig(depth=4, skips=(4,))
    with pytest.raises(ConfigError):
        FieldConfig(flow_scale=-1.0)


def test_default_fields_match_nsff_pl_size():
    static, dynamic = StaticField(FieldConfig()), DynamicField(FieldConfig(), 30)
    n_static = sum(p.numel() for p in static.parameters())
    n_dynamic = sum(p.numel() for p in dynamic.parameters())
    assert abs(n_static - 0.63e6) < 0.02e6  # nsff_pl's static MLP: about 0.63 M
    assert abs(n_dynamic - 30 * 48 - 0.59e6) < 0.02e6  # about 0.59 M plus the embedding


def test_field_shapes_and_flow_bound():
    static, dynamic = _fields()
    x = torch.randn(2, 7, 3) * 5.0
    d = torch.randn(2, 1, 3)
    s = static(x, d)
    assert s.raw_sigma.shape == (2, 7) and s.rgb.shape == (2, 7, 3)
    assert ((s.rgb >= 0) & (s.rgb <= 1)).all()
    out = dynamic.at_times(x, torch.tensor([0, 4]))
    assert out.raw_sigma.shape == (2, 7) and out.rgb.shape == (2, 7, 3)
    for flow in (out.scene_flow_fw, out.scene_flow_bw):
        assert flow.shape == (2, 7, 3)
        assert flow.abs().max() <= TINY.flow_scale
    # per-ray times broadcast over samples, same as one time per sample
    same = dynamic(x, torch.tensor([[0] * 7, [4] * 7]))
    assert_close(same.scene_flow_fw, out.scene_flow_fw)
    with pytest.raises(ValueError):
        static(x)  # use_viewdir needs directions
    no_viewdir = StaticField(FieldConfig(width=8, depth=2, skips=(), use_viewdir=False))
    assert no_viewdir(x).rgb.shape == (2, 7, 3)


# --- sampling, alphas and weights (hand-computed) --------------------------------------------


def test_sample_along_rays():
    assert_close(sample_along_rays(2, 3, perturb=False), torch.tensor([[0.0, 0.5, 1.0]] * 2))
    z = sample_along_rays(50, 3, perturb=True, generator=torch.Generator().manual_seed(0))
    lower, upper = torch.tensor([0.0, 0.25, 0.75]), torch.tensor([0.25, 0.75, 1.0])
    assert ((z >= lower) & (z <= upper)).all()
    assert z.std(0).min() > 0.05  # actually jittered


def test_ray_deltas_last_interval_and_alphas():
    z = torch.tensor([[0.0, 0.5, 1.0]])
    assert_close(ray_deltas(z, 100.0), torch.tensor([[0.5, 0.5, 100.0]]))
    assert_close(ray_deltas(z, 1e-3), torch.tensor([[0.5, 0.5, 1e-3]]))
    # softplus(0) = ln 2, so delta 1 gives alpha 1 - exp(-ln 2) = 0.5; delta 2 gives 0.75
    alpha = alphas_from_sigma(torch.zeros(1, 3), torch.tensor([[1.0, 2.0, 1e-3]]))
    assert_close(alpha, torch.tensor([[0.5, 0.75, 1.0 - 2.0 ** (-1e-3)]]))
    # noise only in training
    raw, deltas = torch.zeros(1, 3), torch.ones(1, 3)
    assert_close(
        alphas_from_sigma(raw, deltas, noise_std=1.0, training=False), torch.full((1, 3), 0.5)
    )
    noisy = alphas_from_sigma(raw, deltas, 1.0, True, torch.Generator().manual_seed(0))
    assert not torch.allclose(noisy, torch.full_like(noisy, 0.5))


def test_composite_weights_two_samples():
    # alpha = 1 - (1 - a_s)(1 - a_d) = [0.5, 0.75]; T = [1, 0.5]
    w = composite_weights(torch.tensor([0.5, 0.5]), torch.tensor([0.0, 0.5]))
    assert_close(w.transmittance, torch.tensor([1.0, 0.5]))
    assert_close(w.static, torch.tensor([0.5, 0.25]))
    assert_close(w.dynamic, torch.tensor([0.0, 0.25]))
    assert_close(w.total, torch.tensor([0.5, 0.375]))


def test_composite_weights_three_samples():
    # alpha = [1 - 0.9 * 0.5, 0.2, 1] = [0.55, 0.2, 1]; T = [1, 0.45, 0.45 * 0.8 = 0.36]
    w_s, w_d, w, trans = composite_weights(
        torch.tensor([[0.1, 0.2, 1.0]]), torch.tensor([[0.5, 0.0, 0.0]])
    )
    assert_close(trans, torch.tensor([[1.0, 0.45, 0.36]]))
    assert_close(w_s, torch.tensor([[0.1, 0.09, 0.36]]))
    assert_close(w_d, torch.tensor([[0.5, 0.0, 0.0]]))
    assert_close(w, torch.tensor([[0.55, 0.09, 0.36]]))


def test_static_alone_equals_classic_nerf_weights():
    alpha_s = torch.rand(4, 9, generator=torch.Generator().manual_seed(0))
    w = composite_weights(alpha_s, torch.zeros_like(alpha_s))
    classic = torch.empty_like(alpha_s)
    for r in range(4):
        trans = 1.0
        for i in range(9):
            classic[r, i] = alpha_s[r, i] * trans
            trans *= 1.0 - alpha_s[r, i].item()
    assert_close(w.static, classic)
    assert_close(w.total, classic)
    assert_close(volume_weights(alpha_s)[0], classic)
    assert (w.dynamic == 0).all()
    assert_close(volume_weights(torch.tensor([0.5, 0.5, 1.0]))[0], torch.tensor([0.5, 0.25, 0.25]))


def test_compositing_in_runs_of_samples_matches_one_pass():
    # the fractional-time render composites a few sample planes at a time, passing T along
    g = torch.Generator().manual_seed(3)
    a_s, a_d = torch.rand(4, 10, generator=g), 0.5 * torch.rand(4, 10, generator=g)
    whole = composite_weights(a_s, a_d)
    first = composite_weights(a_s[:, :4], a_d[:, :4])
    start = transmittance_after(first.transmittance, a_s[:, :4], a_d[:, :4])
    second = composite_weights(a_s[:, 4:], a_d[:, 4:], start=start)
    for name in whole._fields:
        joined = torch.cat([getattr(first, name), getattr(second, name)], dim=-1)
        assert_close(joined, getattr(whole, name), msg=name)
    exit_all = transmittance_after(whole.transmittance, a_s, a_d)
    assert_close(exit_all, ((1 - a_s) * (1 - a_d)).prod(-1))
    assert_close(exit_all, 1 - whole.total.sum(-1))  # what is not absorbed passes
    w1, t1 = volume_weights(a_s[:, :6])
    w2, _ = volume_weights(a_s[:, 6:], start=transmittance_after(t1, a_s[:, :6]))
    assert_close(torch.cat([w1, w2], -1), volume_weights(a_s)[0])
    # by hand: alpha = [0.5] then [0.5, 1] with T = 0.5 in front
    assert_close(
        transmittance_after(torch.tensor([1.0, 0.5]), torch.tensor([0.5, 0.5])), torch.tensor(0.25)
    )
    w, _ = volume_weights(torch.tensor([0.5, 1.0]), start=torch.tensor(0.5))
    assert_close(w, torch.tensor([0.25, 0.25]))


def test_over_background():
    rgb = over_background(torch.tensor([[0.5, 0.0, 0.0]]), torch.tensor([0.5]), 0.8)
    assert_close(rgb, torch.tensor([[0.9, 0.4, 0.4]]))


def test_huge_dynamic_density_takes_all_weight():
    num_samples, k = 6, 3
    z = torch.linspace(0, 1, num_samples)[None]
    raw_s = torch.full((1, num_samples), -30.0)  # softplus(-30) ~ 1e-13: empty background
    raw_d = torch.full((1, num_samples), -30.0)
    raw_d[0, k] = 1e4
    w = composite_weights(
        alphas_from_sigma(raw_s, ray_deltas(z, 100.0)),
        alphas_from_sigma(raw_d, ray_deltas(z, 1e-3)),
    )
    onehot = torch.zeros(1, num_samples)
    onehot[0, k] = 1.0
    assert_close(w.dynamic, onehot)
    assert_close(w.total, onehot)
    assert_close(w.static, torch.zeros_like(onehot))


def test_disocclusion_and_correspondences_by_hand():
    per_ray, per_sample = disocclusion(torch.tensor([0.2, 0.1]), torch.tensor([0.5, 0.0]))
    assert_close(per_sample, torch.tensor([0.7, 0.9]))
    assert_close(per_ray, torch.tensor(0.8))
    x = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    f_fw = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    surface, fw, bw = rendered_correspondences(torch.tensor([0.25, 0.75]), x, f_fw, -f_fw)
    assert_close(surface, torch.tensor([0.0, 0.0, 0.75]))
    assert_close(fw, torch.tensor([0.25, 0.0, 0.75]))
    assert_close(bw, torch.tensor([-0.25, 0.0, 0.75]))


def test_neighbour_frames_validity():
    t = torch.tensor([0, 2, NUM_FRAMES - 1])
    t_fw, ok_fw = neighbour_frames(t, +1, NUM_FRAMES)
    t_bw, ok_bw = neighbour_frames(t, -1, NUM_FRAMES)
    assert t_fw.tolist() == [1, 3, NUM_FRAMES - 1] and ok_fw.tolist() == [True, True, False]
    assert t_bw.tolist() == [0, 1, NUM_FRAMES - 2] and ok_bw.tolist() == [False, True, True]


# --- render_rays ------------------------------------------------------------------------------


def test_render_shapes_far_flow_and_inference_mode():
    static, dynamic = _fields()
    rays_o, rays_d = _rays()
    t = torch.tensor([0, 1, 2, 3, 4, 2])
    out = render_rays(static, dynamic, rays_o, rays_d, t, DETERMINISTIC, training=False)
    r, s = 6, DETERMINISTIC.num_samples
    assert out.image.rgb.shape == (r, 3) and out.image.depth.shape == (r,)
    assert out.points.shape == (r, s, 3) and out.dynamic_weights.shape == (r, s)
    assert out.fw is None and out.bw is None
    far = out.z > DETERMINISTIC.z_far
    assert far.any() and (~far).any()
    for flow in (out.scene_flow_fw, out.scene_flow_bw):
        assert (flow[far] == 0).all()
        assert (flow[~far].abs() > 0).all()
    # dynamic over grey, static-only weights summing to ~1 (last static interval is 100)
    assert_close(
        out.image.dynamic_rgb,
        (out.dynamic_weights[..., None] * out.dynamic_sample_rgb).sum(1)
        + 0.8 * (1 - out.dynamic_weights.sum(1, keepdim=True)),
    )
    assert ((out.image.depth >= 0) & (out.image.depth <= 1)).all()
    # static alone uses the static field's own transmittance, not the composite one
    alone, _ = volume_weights(out.static_alpha)
    assert_close(out.image.static_rgb, (alone[..., None] * out.static_sample_rgb).sum(1))
    assert_close(out.image.static_depth, (alone * out.z).sum(1))
    assert not torch.allclose(alone, out.static_weights)
    # chunked rendering gives the same image
    image = render_in_chunks(
        lambda o, d, tt: (
            render_rays(static, dynamic, o, d, tt, DETERMINISTIC, training=False).image
        ),
        rays_o,
        rays_d,
        t,
        chunk=4,
    )
    assert_close(image.rgb, out.image.rgb)
    assert_close(image.static_depth, out.image.static_depth)


def test_static_last_delta_sets_the_backdrop_interval():
    """The static field's last sample reaches infinity; its interval length is
    RenderConfig.static_last_delta: 100 makes it an opaque backdrop, about one bin an ordinary
    sample (what the far-wall measurements in docs/method.md need)."""
    static, dynamic = _fields()
    rays_o, rays_d = _rays()
    t = torch.tensor([0, 1, 2, 3, 4, 2])
    bin_cfg = dataclasses.replace(DETERMINISTIC, static_last_delta=1.0 / 11)
    backdrop = render_rays(static, dynamic, rays_o, rays_d, t, DETERMINISTIC, training=False)
    ordinary = render_rays(static, dynamic, rays_o, rays_d, t, bin_cfg, training=False)
    # every sample but the last is the same; the last one's density is the same too
    assert_close(ordinary.static_alpha[:, :-1], backdrop.static_alpha[:, :-1])
    a_bin = ordinary.static_alpha[:, -1].double()
    assert (a_bin > 0).all() and (a_bin < 0.5).all()
    sigma = -torch.log1p(-a_bin) / (1.0 / 11)
    assert_close(backdrop.static_alpha[:, -1].double(), 1.0 - torch.exp(-sigma * 100.0))
    # the backdrop takes what the ordinary sample leaves as transmittance
    assert (backdrop.weights.sum(1) > ordinary.weights.sum(1) + 1e-3).all()
    with pytest.raises(ConfigError, match="last deltas"):
        RenderConfig(static_last_delta=0.0)


def test_warped_render_is_identity_without_motion():
    cfg = dataclasses.replace(TINY, flow_scale=0.0)  # zero scene flow
    static, dynamic = _fields(cfg)
    with torch.no_grad():
        dynamic.time_embedding.weight[:] = dynamic.time_embedding.weight[2]  # e_t equal for all t
    rays_o, rays_d = _rays()
    t = torch.tensor([0, 1, 2, 3, 4, 2])
    out = render_rays(static, dynamic, rays_o, rays_d, t, DETERMINISTIC, training=True)
    for warped in (out.fw, out.bw):
        assert warped is not None
        assert_close(warped.rgb, out.image.rgb)
        assert_close(warped.dynamic_weights, out.dynamic_weights)
        assert_close(warped.points, out.points)
        assert_close(warped.cycle_points, out.points)
        assert_close(warped.disocclusion, torch.ones(6))
        assert_close(warped.disocclusion_samples, torch.ones(6, DETERMINISTIC.num_samples))
    assert out.fw.valid.tolist() == [True] * 4 + [False, True]
    assert out.bw.valid.tolist() == [False] + [True] * 5
    assert out.fw.time.tolist() == [1, 2, 3, 4, 4, 3]
    assert out.bw.time.tolist() == [0, 0, 1, 2, 3, 1]


def test_warped_render_uses_neighbour_time_and_returned_flow():
    static, dynamic = _fields()
    rays_o, rays_d = _rays()
    t = torch.tensor([0, 1, 2, 3, 4, 2])
    out = render_rays(static, dynamic, rays_o, rays_d, t, DETERMINISTIC, training=True)
    assert out.fw is not None and out.bw is not None
    # cycle: warped points moved by the flow *back to t* queried at the neighbour time
    far = (out.z > DETERMINISTIC.z_far)[..., None]
    back_fw = dynamic.at_times(out.fw.points, out.fw.time).scene_flow_bw.masked_fill(far, 0.0)
    back_bw = dynamic.at_times(out.bw.points, out.bw.time).scene_flow_fw.masked_fill(far, 0.0)
    assert_close(out.fw.cycle_points, out.fw.points + back_fw)
    assert_close(out.bw.cycle_points, out.bw.points + back_bw)
    assert_close(out.fw.points, out.points + out.scene_flow_fw)
    # without motion, the warp changes the render only through the neighbour's time code
    static, dynamic = _fields(dataclasses.replace(TINY, flow_scale=0.0))
    out = render_rays(static, dynamic, rays_o, rays_d, t, DETERMINISTIC, training=True)
    assert out.fw is not None
    same = ~out.fw.valid  # t = N - 1: the neighbour is clamped to t itself
    assert_close(out.fw.rgb[same], out.image.rgb[same])
    assert not torch.allclose(out.fw.rgb[~same], out.image.rgb[~same])


def test_warp_every_k_renders_the_same_warps_for_every_kth_ray():
    """warp_every=2 queries the neighbour times for rays 0, 2, 4 only, and gives them exactly
    the warped render of the full batch; the loss terms read the matching rows."""
    static, dynamic = _fields()
    rays_o, rays_d = _rays()
    t = torch.tensor([0, 1, 2, 3, 4, 2])
    full = render_rays(static, dynamic, rays_o, rays_d, t, DETERMINISTIC, training=True)
    cfg = dataclasses.replace(DETERMINISTIC, warp_every=2)
    part = render_rays(static, dynamic, rays_o, rays_d, t, cfg, training=True)
    for a, b in ((full.fw, part.fw), (full.bw, part.bw)):
        assert a is not None and b is not None and a.rays is None
        assert b.rays.tolist() == [0, 2, 4]
        for name in ("time", "valid", "points"):  # every ray: cheap, used by the flow terms
            assert_close(getattr(b, name), getattr(a, name))
        for name in ("rgb", "dynamic_weights", "cycle_points", "disocclusion"):
            assert_close(getattr(b, name), getattr(a, name)[::2])
        assert_close(b.on_rays(full.image.rgb), full.image.rgb[::2])
    with pytest.raises(ConfigError, match="warp_every"):
        RenderConfig(warp_every=0)


def test_gradients_reach_both_fields():
    static, dynamic = _fields()
    rays_o, rays_d = _rays()
    t = torch.tensor([0, 1, 2, 3, 4, 2])
    cfg = RenderConfig(num_samples=8)
    out = render_rays(
        static, dynamic, rays_o, rays_d, t, cfg, training=True, generator=torch.Generator()
    )
    assert out.fw is not None and out.bw is not None
    assert not out.fw.disocclusion.requires_grad
    loss = (
        out.image.rgb.sum()
        + out.fw.rgb.sum()
        + out.bw.rgb.sum()
        + (out.fw.cycle_points - out.points).abs().sum()
        + out.surface_point_fw.sum()
    )
    loss.backward()
    for field in (static, dynamic):
        for name, p in field.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bf16_autocast_renders_in_float32():
    static, dynamic = _fields()
    rays_o, rays_d = _rays()
    t = torch.tensor([0, 1, 2, 3, 4, 2])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = render_rays(static, dynamic, rays_o, rays_d, t, DETERMINISTIC, training=True)
    assert out.image.rgb.dtype == torch.float32 and out.fw is not None
    assert torch.isfinite(out.image.rgb).all() and torch.isfinite(out.fw.cycle_points).all()

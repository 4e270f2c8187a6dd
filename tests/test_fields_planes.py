"""Plane-factorised fields: lookups against hand-computed values, the time rows, gradients to
positions (the scene flow learns through them), and the optimiser's parameter groups."""

import dataclasses

import pytest
import torch

from nsff_core.config import TrainConfig, to_dict
from nsff_core.errors import ConfigError
from nsff_core.model.fields_planes import (
    SPATIAL_PLANES,
    PlaneDeformDynamicField,
    PlaneDynamicField,
    PlaneFieldConfig,
    PlaneStack,
    PlaneStaticField,
    plane_grid,
    total_variation,
)

SMALL = PlaneFieldConfig(base_resolution=4, levels=2, dynamic_levels=1, channels=3, hidden=8)


def _stack_xy_xz_yz(values):
    """A one-channel level of 3 planes (2 x 2 cells) with the given corner values."""
    stack = PlaneStack((slice(0, 2), slice(0, 3, 2), slice(1, 3)), (2, 2), 1, "ones")
    with torch.no_grad():
        stack.planes.copy_(torch.as_tensor(values, dtype=torch.float32).view(3, 1, 2, 2))
    return stack


def test_plane_lookup_is_the_product_of_bilinear_values():
    # plane (a, b) is indexed [b, a]: rows along the second axis, columns along the first
    xy = [[1.0, 2.0], [3.0, 4.0]]  # value at (x=-1, y=-1) 1, (x=1, y=-1) 2, (x=-1, y=1) 3
    xz = [[1.0, 1.0], [5.0, 5.0]]  # grows with z only
    yz = [[2.0, 2.0], [2.0, 2.0]]  # constant
    stack = _stack_xy_xz_yz([xy, xz, yz])
    pts = torch.tensor([[-1.0, -1.0, -1.0], [1.0, -1.0, 1.0], [0.0, 0.0, 0.0]])
    out = stack(pts)[:, 0]
    # corner: 1 * 1 * 2; (x=1, y=-1, z=1): 2 * 5 * 2; centre: mean(1..4) * 3 * 2
    assert torch.allclose(out, torch.tensor([2.0, 20.0, 2.5 * 3 * 2]))


def test_points_outside_the_cube_read_the_border():
    stack = _stack_xy_xz_yz(
        [[[1.0, 2.0], [3.0, 4.0]], [[1.0, 1.0], [1.0, 1.0]]] + [[[1, 1], [1, 1]]]
    )
    assert torch.allclose(stack(torch.tensor([[5.0, -7.0, 0.0]]))[:, 0], torch.tensor([2.0]))


def test_a_shared_grid_reads_what_each_level_reads_alone():
    # the fields build one grid per set of coordinates and hand it to every level: same
    # values and the same gradients to the positions as each level's own forward
    torch.manual_seed(0)
    levels = [PlaneStack(SPATIAL_PLANES, (r, r), 4, "uniform") for r in (3, 5)]
    pts = (torch.rand(9, 3) * 2.4 - 1.2).requires_grad_(True)
    alone = torch.cat([level(pts) for level in levels], dim=-1)
    (g_alone,) = torch.autograd.grad(alone.square().sum(), pts)
    grid = plane_grid(pts, SPATIAL_PLANES)
    shared = torch.cat([level.lookup(grid) for level in levels]).t()
    (g_shared,) = torch.autograd.grad(shared.square().sum(), pts)
    assert torch.equal(alone, shared)
    assert torch.allclose(g_alone, g_shared, atol=1e-6) and g_alone.abs().sum() > 0


def test_dynamic_field_reads_the_row_of_its_frame():
    field = PlaneDynamicField(SMALL, num_frames=5)
    x = torch.rand(7, 3) * 2 - 1
    base = field(x, torch.full((7,), 2))
    # change only row 2 of every time plane: frame 2 changes, frames 1 and 3 do not
    before = {t: field(x, torch.full((7,), t)).raw_sigma for t in (1, 3)}
    with torch.no_grad():  # time planes (x, t), (y, t), (z, t): time along the rows
        field.time_levels[0].planes[:, :, 2, :] *= 3.0
    assert not torch.allclose(field(x, torch.full((7,), 2)).raw_sigma, base.raw_sigma)
    for t in (1, 3):
        assert torch.allclose(field(x, torch.full((7,), t)).raw_sigma, before[t])


@pytest.mark.parametrize("dynamic_class", [PlaneDynamicField, PlaneDeformDynamicField])
def test_fields_keep_the_mlp_interface_and_bounds(dynamic_class):
    static, dynamic = PlaneStaticField(SMALL), dynamic_class(SMALL, num_frames=4)
    x = torch.rand(5, 6, 3) * 2 - 1
    s = static(x, torch.randn(5, 1, 3))
    assert s.raw_sigma.shape == (5, 6) and s.rgb.shape == (5, 6, 3)
    d = dynamic.at_times(x, torch.tensor([0, 1, 2, 3, 3]))
    assert d.raw_sigma.shape == (5, 6) and d.scene_flow_fw.shape == (5, 6, 3)
    assert d.scene_flow_fw.abs().max() <= SMALL.flow_scale and (d.rgb >= 0).all()
    with pytest.raises(ValueError, match="ray directions"):
        static(x)
    with pytest.raises(ValueError, match="broadcast"):
        dynamic(x, torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("dynamic_class", [PlaneDynamicField, PlaneDeformDynamicField])
def test_gradients_reach_the_query_positions_and_the_planes(dynamic_class):
    field = dynamic_class(SMALL, num_frames=3)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in field.grid_parameters():
            p.uniform_(0.1, 1.0)
    x = (torch.rand(16, 3) * 1.8 - 0.9).requires_grad_()
    out = field(x, torch.ones(16, dtype=torch.long))
    (out.raw_sigma.sum() + out.rgb.sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in field.grid_parameters())


def test_the_deforming_field_starts_time_invariant_and_moves_its_canonical_shape():
    torch.manual_seed(0)
    field = PlaneDeformDynamicField(SMALL, num_frames=4)
    x = torch.rand(9, 3) * 1.6 - 0.8
    at = {t: field(x, torch.full((9,), t)) for t in range(4)}
    for t in (1, 2, 3):  # the warp starts as the identity: every frame reads the same shape
        assert torch.equal(at[t].raw_sigma, at[0].raw_sigma)
        assert torch.equal(at[t].rgb, at[0].rgb)
    # an offset of +0.25 in x: the field at x reads what it read at x + 0.25 before
    shifted = x.clone()
    shifted[:, 0] += 0.25
    expected = field(shifted, torch.full((9,), 2))
    with torch.no_grad():
        field.motion_decoder[-1].bias[0] = 0.25
    moved = field(x, torch.full((9,), 2))
    assert torch.allclose(moved.raw_sigma, expected.raw_sigma)
    assert torch.allclose(moved.rgb, expected.rgb)
    assert not torch.allclose(moved.raw_sigma, at[2].raw_sigma)


RICH = PlaneFieldConfig(
    base_resolution=4, levels=2, dynamic_levels=1, channels=3, hidden=8, frame_code=4,
    detail_levels=2,
)  # fmt: skip


def test_frame_codes_and_detail_planes_start_neutral_and_change_only_their_own_frame():
    torch.manual_seed(0)
    field = PlaneDeformDynamicField(RICH, num_frames=5)
    assert field.frame_codes.shape == (5, 4)
    # without codes the field has no such parameter: checkpoints from before the option load
    assert "frame_codes" not in PlaneDeformDynamicField(SMALL, num_frames=5).state_dict()
    assert [tuple(s.planes.shape[-2:]) for s in field.detail_time] == [(5, 4), (5, 8)]
    x = torch.rand(9, 3) * 1.6 - 0.8
    at = {t: field(x, torch.full((9,), t)).raw_sigma for t in range(5)}
    for t in range(1, 5):  # codes at zero, detail time planes at one: time-invariant
        assert torch.equal(at[t], at[0])
    with torch.no_grad():
        field.frame_codes[2] = 1.0
    changed = {t: field(x, torch.full((9,), t)).raw_sigma for t in range(5)}
    assert not torch.allclose(changed[2], at[2])
    assert all(torch.equal(changed[t], at[t]) for t in (0, 1, 3, 4))
    with torch.no_grad():
        field.frame_codes.zero_()
        field.detail_time[1].planes[:, :, 3, :] = 2.0
    changed = {t: field(x, torch.full((9,), t)).raw_sigma for t in range(5)}
    assert not torch.allclose(changed[3], at[3])
    assert all(torch.equal(changed[t], at[t]) for t in (0, 1, 2, 4))
    # the detail planes are read at the canonical (warped) position: an offset moves them too
    with torch.no_grad():
        field.detail_time[1].planes.fill_(1.0)
        field.detail[0].planes.uniform_(0.1, 1.0)
    shifted = x.clone()
    shifted[:, 1] -= 0.3
    expected = field(shifted, torch.full((9,), 1)).raw_sigma
    with torch.no_grad():
        field.motion_decoder[-1].bias[1] = -0.3
    assert torch.allclose(field(x, torch.full((9,), 1)).raw_sigma, expected)


def test_frame_codes_and_detail_planes_learn_and_need_the_deforming_field():
    from nsff_core.model.system import make_fields

    field = PlaneDeformDynamicField(RICH, num_frames=3)
    x = (torch.rand(16, 3) * 1.8 - 0.9).requires_grad_()
    out = field(x, torch.tensor([0, 2] * 8))
    (out.raw_sigma.sum() + out.rgb.sum()).backward()
    params = field.grid_parameters()
    assert any(p is field.frame_codes for p in params)
    assert field.frame_codes.grad[[0, 2]].abs().sum(1).gt(0).all()
    assert field.frame_codes.grad[1].abs().sum() == 0  # frame 1 was not queried
    assert all(p.grad is not None for p in params)
    assert field.regularization() >= 0
    for key in ("grid_frame_code", "grid_detail_levels"):
        bad = TrainConfig(field="planes", grid_dynamic="kplanes", **{key: 2})
        with pytest.raises(ConfigError, match=key):
            make_fields(bad, num_frames=3)
    with pytest.raises(ConfigError, match="grid_frame_code"):
        PlaneFieldConfig(frame_code=-1)


def test_the_frame_texture_changes_only_its_own_frames_colour_where_it_is():
    from nsff_core.model.system import make_fields

    torch.manual_seed(0)
    cfg = PlaneFieldConfig(
        base_resolution=4, levels=2, dynamic_levels=1, channels=3, hidden=8, frame_texture=8
    )
    field = PlaneDeformDynamicField(cfg, num_frames=4)
    assert field.texture.shape == (1, field.TEXTURE_CHANNELS, 4, 8, 8)
    assert any(p is field.texture for p in field.grid_parameters())
    assert "texture" not in PlaneDeformDynamicField(SMALL, num_frames=4).state_dict()
    x = torch.rand(50, 3) * 1.6 - 0.8
    before = {t: field(x, torch.full((50,), t)) for t in range(4)}
    plain = PlaneDeformDynamicField(SMALL, num_frames=4)
    plain.load_state_dict(field.state_dict(), strict=False)
    # zero at the start: the colour is the decoder's alone
    assert torch.allclose(plain(x, torch.full((50,), 2)).rgb, before[2].rgb)
    with torch.no_grad():  # paint the right half (x > 0) of frame 2's texture
        field.texture[:, :, 2, :, 4:] = 1.0
    after = {t: field(x, torch.full((50,), t)) for t in range(4)}
    for t in (0, 1, 3):
        assert torch.equal(after[t].rgb, before[t].rgb)
    right, left = x[:, 0] > 0.3, x[:, 0] < -0.3
    changed = (after[2].rgb - before[2].rgb).abs().amax(-1)
    assert changed[right].min() > 1e-4 and changed[left].max() == 0
    for t in range(4):  # colour only: density and scene flow unchanged
        assert torch.equal(after[t].raw_sigma, before[t].raw_sigma)
        assert torch.equal(after[t].scene_flow_fw, before[t].scene_flow_fw)
    after[2].rgb.sum().backward()
    grad = field.texture.grad
    assert grad[:, :, 2].abs().sum() > 0 and grad[:, :, [0, 1, 3]].abs().sum() == 0
    # the warped renders' query trains the texture too, unless texture_warped is off
    for warped, trained in ((True, True), (False, False)):
        field.cfg = dataclasses.replace(cfg, texture_warped=warped)
        field.texture.grad = None
        out = field.at_times(x[None], torch.tensor([2]), neighbours=True)
        torch.testing.assert_close(out.rgb[0], after[2].rgb)  # the same colour either way
        out.rgb.sum().backward()
        assert (field.texture.grad is not None and field.texture.grad.abs().sum() > 0) == trained
    bad = TrainConfig(field="planes", grid_dynamic="kplanes", grid_frame_texture=8)
    with pytest.raises(ConfigError, match="grid_frame_texture"):
        make_fields(bad, num_frames=3)
    with pytest.raises(ConfigError, match="grid_frame_texture"):
        PlaneFieldConfig(frame_texture=1)


def test_the_density_texture_carves_its_own_frame_and_starts_neutral():
    import math

    torch.manual_seed(0)
    cfg = PlaneFieldConfig(
        base_resolution=4,
        levels=2,
        dynamic_levels=1,
        channels=3,
        hidden=8,
        frame_texture=8,
        texture_density=True,
    )
    field = PlaneDeformDynamicField(cfg, num_frames=4)
    plain = PlaneDeformDynamicField(dataclasses.replace(cfg, texture_density=False), 4)
    assert "texture_sigma.weight" not in plain.state_dict()
    plain.load_state_dict(field.state_dict(), strict=False)
    x = torch.rand(60, 3) * 1.6 - 0.8
    times = {t: torch.full((60,), t) for t in range(4)}
    # a zero texture adds nothing: the same density as without the option
    for t in range(4):
        torch.testing.assert_close(field(x, times[t]).raw_sigma, plain(x, times[t]).raw_sigma)
    before = {t: field(x, times[t]) for t in range(4)}
    with torch.no_grad():  # frame 1's right half (x > 0) carves, with a large texture value
        field.texture_sigma.weight.fill_(1.0)
        field.texture[:, :, 1, :, 4:] = 50.0
    after = {t: field(x, times[t]) for t in range(4)}
    for t in (0, 2, 3):
        assert torch.equal(after[t].raw_sigma, before[t].raw_sigma)
    right, left = x[:, 0] > 0.3, x[:, 0] < -0.3
    drop = before[1].raw_sigma - after[1].raw_sigma
    assert drop[right].min() > 100.0 and drop[left].abs().max() == 0
    # the other way it raises the density by at most ln 2
    with torch.no_grad():
        field.texture[:, :, 1, :, 4:] = -50.0
    rise = field(x, times[1]).raw_sigma - before[1].raw_sigma
    assert rise.max() <= math.log(2.0) + 1e-6 and rise[right].min() > math.log(2.0) - 1e-3
    # the density's gradient reaches frame 1's texture alone; the warped renders' query
    # reads it without gradient (texture_warped off)
    field(x, times[1]).raw_sigma.sum().backward()
    grad = field.texture.grad
    assert grad[:, :, 1].abs().sum() > 0 and grad[:, :, [0, 2, 3]].abs().sum() == 0
    field.texture.grad = None
    field.at_times(x[None], torch.tensor([1]), neighbours=True).raw_sigma.sum().backward()
    assert field.texture.grad is None or field.texture.grad.abs().sum() == 0
    with pytest.raises(ConfigError, match="grid_frame_texture_density"):
        PlaneFieldConfig(texture_density=True)
    # the training config reaches the field
    from nsff_core.model.system import make_fields

    small = dict(grid_base_resolution=4, grid_levels=1, grid_channels=2, grid_hidden=4)
    on = TrainConfig(
        field="planes",
        grid_dynamic="deform",
        grid_frame_texture=4,
        grid_frame_texture_density=True,
        **small,
    )
    assert make_fields(on, num_frames=3)[1].texture_sigma is not None
    off = dataclasses.replace(on, grid_frame_texture_density=False)
    assert make_fields(off, num_frames=3)[1].texture_sigma is None
    with pytest.raises(ConfigError, match="grid_frame_texture_density"):
        make_fields(dataclasses.replace(on, grid_frame_texture=0), num_frames=3)


def test_the_frame_texture_reads_like_grid_samples_trilinear_lookup():
    import torch.nn.functional as F

    torch.manual_seed(0)
    cfg = PlaneFieldConfig(
        base_resolution=4, levels=1, dynamic_levels=1, channels=2, hidden=8, frame_texture=6
    )
    field = PlaneDeformDynamicField(cfg, num_frames=5)
    with torch.no_grad():
        field.texture.normal_()
    m = 400
    coords = torch.rand(m, 4) * 2.4 - 1.2  # some outside the box: border values
    coords[:200, 3] = torch.randint(0, 5, (200,)) / 2 - 1  # frame rows exactly; the rest between
    coords.requires_grad_()
    ours = field._texture_features(coords)
    grid = coords[:, (0, 1, 3)].clamp(-1, 1).view(1, 1, 1, m, 3)
    ref = F.grid_sample(field.texture, grid, padding_mode="border", align_corners=True)
    ref = ref.view(field.TEXTURE_CHANNELS, m).t()
    torch.testing.assert_close(ours, ref)
    weights = torch.randn(m, field.TEXTURE_CHANNELS)
    g_ours = torch.autograd.grad((ours * weights).sum(), (field.texture, coords))
    g_ref = torch.autograd.grad((ref * weights).sum(), (field.texture, coords))
    torch.testing.assert_close(g_ours[0], g_ref[0])
    inside = coords.detach()[:, :2].abs() < 0.99  # the gradient in (x, y) inside the box
    torch.testing.assert_close(g_ours[1][:, :2][inside], g_ref[1][:, :2][inside])
    beyond = coords.detach()[:, :2].abs() > 1
    assert beyond.any() and g_ours[1][:, :2][beyond].abs().sum() == 0, "no pull beyond the border"


def test_a_frame_texture_too_large_for_the_clip_is_refused_before_it_is_allocated():
    from nsff_core.config import MAX_GRID_FEATURES

    cfg = PlaneFieldConfig(
        base_resolution=4, levels=1, dynamic_levels=1, channels=2, hidden=8, frame_texture=1024
    )
    frames = MAX_GRID_FEATURES // (PlaneDeformDynamicField.TEXTURE_CHANNELS * 1024**2)
    # 65 frames at 1024 cells are just over 1 GiB of features (4 with the optimiser): refused,
    # naming the setting, the frame count and the largest texture that fits
    with pytest.raises(ConfigError, match=r"grid_frame_texture 1024 over 65 frames.* 1016 "):
        PlaneDeformDynamicField(cfg, num_frames=frames + 1)
    assert frames == 64
    small = PlaneFieldConfig(
        base_resolution=4, levels=1, dynamic_levels=1, channels=2, hidden=8, frame_texture=16
    )
    assert PlaneDeformDynamicField(small, num_frames=frames + 1).texture.shape[2] == 65


def test_the_warp_levels_halve_from_their_own_finest_resolution():
    def warp_sizes(**kw):
        cfg = PlaneFieldConfig(base_resolution=8, channels=2, hidden=4, **kw)
        field = PlaneDeformDynamicField(cfg, num_frames=5)
        return [tuple(s.planes.shape[-2:]) for s in field.motion], [
            tuple(s.planes.shape[-2:]) for s in field.motion_time
        ]

    # default: the base resolution, then halved (coarsest first)
    assert warp_sizes(motion_levels=2) == ([(4, 4), (8, 8)], [(5, 4), (5, 8)])
    # a finer warp than the canonical field's coarsest level, its time planes as wide
    assert warp_sizes(motion_levels=3, motion_resolution=32) == (
        [(8, 8), (16, 16), (32, 32)],
        [(5, 8), (5, 16), (5, 32)],
    )
    assert warp_sizes(motion_levels=3, motion_resolution=4)[0] == [(2, 2), (2, 2), (4, 4)]
    with pytest.raises(ConfigError, match="grid_motion_resolution"):
        PlaneFieldConfig(motion_resolution=1)


def test_total_variation():
    assert total_variation(torch.ones(1, 2, 4, 4)) == 0
    ramp = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 1, 4, 4)
    assert torch.isclose(total_variation(ramp), torch.tensor(1.0))  # (1^2 along w) + 0
    field = PlaneStaticField(SMALL)
    assert field.regularization() > 0


def test_the_image_plane_adds_features_over_x_and_y_alone():
    cfg = PlaneFieldConfig(
        base_resolution=4, levels=1, channels=2, hidden=8, use_viewdir=False, image_resolution=8
    )
    field = PlaneStaticField(cfg)
    assert field.image.planes.shape == (1, 2, 8, 8)
    assert any(p is field.image.planes for p in field.grid_parameters())
    # it starts constant; raising the cells around x = y = 0 changes the points there at every
    # depth and leaves the points over other cells alone
    z = torch.linspace(-0.9, 0.9, 5)
    on = torch.stack([torch.zeros(5), torch.zeros(5), z], -1)
    off = torch.stack([torch.full((5,), 0.9), torch.full((5,), -0.9), z], -1)
    before_on, before_off = field(on).raw_sigma, field(off).raw_sigma
    with torch.no_grad():
        field.image.planes[:, :, 3:5, 3:5] += 5.0
    assert (field(on).raw_sigma - before_on).abs().min() > 0
    assert torch.equal(field(off).raw_sigma, before_off)
    # without it (the default) the state holds no such plane: older checkpoints load unchanged
    assert not any("image" in k for k in PlaneStaticField(SMALL).state_dict())
    with pytest.raises(ConfigError, match="grid_image_resolution"):
        PlaneFieldConfig(image_resolution=1)


def test_system_gives_the_planes_their_own_learning_rate():
    from nsff_core.model.data import SceneMeta
    from nsff_core.model.system import NSFFSystem

    cfg = TrainConfig(field="planes", grid_levels=2, grid_channels=2, grid_hidden=8, grid_lr=0.05)
    K = [[50.0, 0, 31.5], [0, 50.0, 17.5], [0, 0, 1]]
    c2w = [torch.eye(4).tolist()] * 3
    system = NSFFSystem(cfg, SceneMeta(3, K, c2w), 10)

    class FakeTrainer:
        max_steps = 10

    system.trainer = FakeTrainer()  # configure_optimizers reads the step budget
    opt = system.configure_optimizers()["optimizer"]
    lrs = sorted(g["lr"] for g in opt.param_groups)
    assert lrs == [cfg.lr, 0.05]
    n_grid = sum(p.numel() for p in opt.param_groups[1]["params"])
    assert n_grid == sum(
        p.numel() for f in (system.static_field, system.dynamic_field) for p in f.grid_parameters()
    )


def test_planes_cover_their_extent_instead_of_reading_the_border():
    """With extent (2, 1) the static field tells x = 1.2 from x = 1.8 (inside its box); with the
    NDC cube both read the border cells and are the same."""
    from nsff_core.model.fields_planes import PlaneFieldConfig, PlaneStaticField

    torch.manual_seed(0)
    pts = torch.tensor([[1.2, 0.0, 0.0], [1.8, 0.0, 0.0]])
    cube = PlaneStaticField(PlaneFieldConfig(use_viewdir=False))
    wide = PlaneStaticField(PlaneFieldConfig(use_viewdir=False, extent=(2.0, 1.0)))
    wide.load_state_dict(cube.state_dict())
    a = cube(pts).raw_sigma
    assert a[0] == a[1]
    b = wide(pts).raw_sigma
    assert b[0] != b[1]
    # the box maps onto the planes: x = 2 in the wide field is x = 1 in the cube
    edge = torch.tensor([[2.0, 0.3, -0.2]])
    assert torch.allclose(wide(edge).raw_sigma, cube(torch.tensor([[1.0, 0.3, -0.2]])).raw_sigma)
    with pytest.raises(ConfigError, match="extent"):
        PlaneFieldConfig(extent=(0.5, 1.0))


def test_the_system_fits_the_planes_to_its_rays_and_old_checkpoints_keep_the_cube():
    from nsff_core.model.data import SceneMeta
    from nsff_core.model.system import NSFFSystem

    k = [[40.0, 0.0, 31.5], [0.0, 40.0, 23.5], [0.0, 0.0, 1.0]]
    moved = torch.eye(4)
    moved[0, 3] = 0.5
    c2w = torch.stack([torch.eye(4), moved]).tolist()
    cfg = to_dict(TrainConfig(field="planes", grid_levels=1, grid_dynamic_levels=1))
    meta = SceneMeta(2, k, c2w, hw=(48, 64))
    fitted = NSFFSystem(cfg, meta, 10)
    assert fitted.extent[0] > 1.5 and fitted.static_field.scale[0] < 0.7
    assert NSFFSystem({**cfg, "grid_bounds": "ndc"}, meta, 10).extent == (1, 1)
    old = {key: value for key, value in cfg.items() if key != "grid_bounds"}
    assert NSFFSystem(old, meta.to_dict(), 10).extent == (1.0, 1.0)


def test_the_regulariser_runs_every_kth_step_at_k_times_the_weight():
    from nsff_core.model.data import SceneMeta
    from nsff_core.model.system import NSFFSystem

    k = [[40.0, 0.0, 31.5], [0.0, 40.0, 23.5], [0.0, 0.0, 1.0]]
    c2w = torch.stack([torch.eye(4), torch.eye(4)]).tolist()
    small = {"grid_levels": 1, "grid_dynamic_levels": 1, "grid_base_resolution": 4}
    meta = SceneMeta(2, k, c2w)
    every = NSFFSystem(TrainConfig(field="planes", **small), meta, 10)
    fourth = NSFFSystem(TrainConfig(field="planes", grid_tv_every=4, **small), meta, 10)
    fourth.load_state_dict(every.state_dict())
    reg = every.field_regularization(5)
    assert reg is not None and reg > 0 and torch.equal(reg, every.field_regularization(0))
    assert [fourth.field_regularization(s) is None for s in range(6)] == [
        False, True, True, True, False, True
    ]  # fmt: skip
    assert torch.allclose(fourth.field_regularization(8), 4 * reg)
    mlp = NSFFSystem(TrainConfig(width=8, depth=1), meta, 10)
    assert mlp.field_regularization(0) is None
    off = NSFFSystem(TrainConfig(field="planes", grid_tv=0.0, **small), meta, 10)
    assert off.field_regularization(0) is None, "a zero weight costs no pass over the planes"


def test_the_canonical_term_pulls_a_point_and_its_flow_image_to_one_canonical_place():
    """Only the canonical term trains the warp of a field whose scene flow is a known shift:
    afterwards a point at t and the point shifted by the flow at t + 1 read (nearly) the same
    canonical place, while before they were a whole shift apart."""
    from nsff_core.model import losses as L

    torch.manual_seed(0)
    field = PlaneDeformDynamicField(SMALL, num_frames=2)
    x = torch.rand(64, 1, 3) * 1.2 - 0.6
    shift = torch.tensor([0.2, -0.1, 0.0])
    t0, t1 = torch.zeros(64, dtype=torch.long), torch.ones(64, dtype=torch.long)
    valid, w = torch.ones(64, dtype=torch.bool), torch.ones(64, 1)

    def gap() -> torch.Tensor:
        a, b = field.at_times(x, t0), field.at_times(x + shift, t1)
        assert a.canonical is not None and b.canonical is not None
        return L.canonical_loss(a.canonical, b.canonical, w, valid)

    before = float(gap())
    assert before == pytest.approx(float(shift.abs().sum() / field.scale.mean()), rel=0.3)
    opt = torch.optim.Adam(field.parameters(), lr=0.01)
    for _ in range(300):
        opt.zero_grad()
        gap().backward()
        opt.step()
    assert float(gap()) < 0.1 * before
    kplanes = PlaneDynamicField(SMALL, num_frames=2).at_times(x, t0)
    assert kplanes.canonical is None


def test_the_canonical_term_moves_the_warp_not_the_scene_flow():
    """Before, an identity warp made the term |f|: its gradient pulled the scene flow (the
    query at x + f) to zero instead of teaching the warp to follow it."""
    from nsff_core.model import losses as L

    torch.manual_seed(0)
    field = PlaneDeformDynamicField(SMALL, num_frames=2)
    x = torch.rand(32, 1, 3) * 1.2 - 0.6
    flow = torch.full((32, 1, 3), 0.1, requires_grad=True)
    a = field.at_times(x, torch.zeros(32, dtype=torch.long))
    b = field.at_times(x + flow, torch.ones(32, dtype=torch.long))
    gap = L.canonical_loss(a.canonical, b.canonical, torch.ones(32, 1), torch.ones(32).bool())
    gap.backward()
    assert float(gap) > 0.1  # a whole flow apart: the warp is still the identity
    assert flow.grad is not None and torch.count_nonzero(flow.grad) == 0
    offset_rows = field.motion_decoder[-1].weight.grad[:3]
    assert offset_rows.abs().sum() > 0
    # the canonical lookup itself still passes the position's gradient (photometric terms)
    b = field.at_times(x + flow, torch.ones(32, dtype=torch.long))
    b.rgb.sum().backward()
    assert flow.grad.abs().sum() > 0


def test_a_training_step_logs_the_canonical_term_and_other_fields_refuse_it():
    from nsff_core.model.data import SceneMeta
    from nsff_core.model.system import NSFFSystem, canonical_term

    k = [[40.0, 0.0, 31.5], [0.0, 40.0, 23.5], [0.0, 0.0, 1.0]]
    c2w = torch.stack([torch.eye(4)] * 3).tolist()
    small = {"grid_levels": 1, "grid_dynamic_levels": 1, "grid_base_resolution": 4}
    cfg = TrainConfig(
        field="planes", grid_dynamic="deform", lambda_canonical=0.5, num_samples=8, **small
    )
    system = NSFFSystem(cfg, SceneMeta(3, k, c2w), 10)
    assert system.loss_weights.canonical == 0.5
    o = torch.zeros(16, 3)
    d = torch.nn.functional.normalize(torch.randn(16, 3), dim=-1)
    d[:, 2] = -d[:, 2].abs() - 0.5
    out = system.render(o, d, torch.ones(16, dtype=torch.long), training=True)
    term = canonical_term(out)
    assert term.ndim == 0 and torch.isfinite(term)
    term.backward()
    offset_rows = system.dynamic_field.motion_decoder[-1].weight.grad[:3]
    assert offset_rows.abs().sum() > 0, "the term trains the warp"
    with pytest.raises(ConfigError, match="lambda_canonical"):
        NSFFSystem(
            TrainConfig(field="planes", lambda_canonical=0.5, **small), SceneMeta(3, k, c2w), 10
        )

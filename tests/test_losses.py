"""Each loss term on a tiny hand-computed case, and the weight schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from nsff_core.model import losses as L


def t(x, **kw) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float64, **kw)


def test_color_loss():
    assert_close(
        L.color_loss(t([[0.0, 0, 0], [1, 1, 1]]), t([[1.0, 0, 0.5], [1, 1, 1]])), t(1.25 / 6)
    )


def test_disparity_loss_is_zero_for_affine_in_disparity():
    disp = torch.rand(50, dtype=torch.float64) + 0.1
    for a, b in [(0.9, 0.3), (2.0, 7.0)]:
        assert L.disparity_loss(a - b * disp, disp).item() < 1e-12
    # the wrong sign of the relation is penalised
    assert L.disparity_loss(0.5 + disp, disp).item() > 1.0


def test_disparity_loss_hand_value():
    depth = t([0.1, 0.2, 0.6], requires_grad=True)
    loss = L.disparity_loss(depth, t([3.0, 2.0, 1.0]))
    # norm(depth) = [-0.6, 0, 2.4], norm(-disp) = [-1.5, 0, 1.5]
    assert_close(loss, t(0.54))
    loss.backward()
    assert torch.isfinite(depth.grad).all()


def test_optical_flow_loss_hand_value():
    P = t([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    X = t([[2.0, 3, 1], [4, 6, 2], [1, 1, -1], [5, 5, 1]], requires_grad=True)
    pixel = t([[1.0, 1], [1, 1], [0, 0], [0, 0]])
    flow = t([[0.5, 1.0], [0.5, 1.0], [0, 0], [0, 0]])
    # ray 2 is behind the camera (dropped inside), ray 3 is masked by the caller
    valid = torch.tensor([True, True, True, False])
    loss = L.optical_flow_loss(X, P, pixel, flow, valid)
    assert_close(loss, t(0.75))  # uv = (2, 3) for both, target (1.5, 2)
    loss.backward()
    assert X.grad[2:].abs().sum() == 0
    # per-ray matrices with a focal length 2 and an x offset of 1 (divided by depth too)
    P2 = t([[2.0, 0, 0, 1], [0, 2, 0, 0], [0, 0, 1, 0]]).expand(4, 3, 4)
    loss2 = L.optical_flow_loss(X.detach(), P2, pixel, flow, valid)
    # uv = (5, 6) and (9 / 2, 12 / 2): L1 to (1.5, 2) is (3.5 + 4) / 2 and (3 + 4) / 2
    assert_close(loss2, t((3.75 + 3.5) / 2))


def test_optical_flow_loss_no_valid_ray_is_zero_and_backprops():
    X = t([[1.0, 2, 0], [float("nan"), 0, 1]], requires_grad=True)
    P = t([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    loss = L.optical_flow_loss(
        X, P, torch.zeros(2, 2), torch.zeros(2, 2), torch.tensor([True, False])
    )  # ray 0 has depth 0
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert torch.equal(X.grad, torch.zeros_like(X))


def test_photometric_warp_loss_weights_by_disocclusion():
    target = torch.zeros(3, 3, dtype=torch.float64)
    warped = torch.sqrt(t([[0.3] * 3, [0.6] * 3, [5.0] * 3]))  # per-ray MSE 0.3, 0.6, 5
    D = t([1.0, 0.5, 1.0])
    loss = L.photometric_warp_loss(warped, target, D, torch.tensor([True, True, False]))
    assert_close(loss, t(0.6 / 1.5))
    none = L.photometric_warp_loss(warped.requires_grad_(), target, D, torch.zeros(3, dtype=bool))
    assert none.item() == 0
    none.backward()


def test_cycle_loss():
    x = torch.zeros(2, 2, 3, dtype=torch.float64)
    x_cyc = t([[[0.3, 0, 0], [9, 9, 9]], [[1, 1, 1], [1, 1, 1]]])
    D = t([[1.0, 0.0], [1.0, 1.0]])
    assert_close(L.cycle_loss(x, x_cyc, D, torch.tensor([True, False])), t(0.1))
    # both rays: (0.1 + 0 + 1 + 1) / 3
    assert_close(L.cycle_loss(x, x_cyc, D, torch.tensor([True, True])), t(2.1 / 3))


def test_temporal_smoothness_uses_first_95_percent_of_samples():
    S = 20  # floor(0.95 * 20) = 19 samples count
    X = torch.zeros(2, S, 3, dtype=torch.float64)
    fw = X.clone()
    fw[:, :, 0] = 1.0
    fw[:, -1] = 1e6  # the far sample is ignored
    assert_close(L.temporal_smoothness(X, fw, X), t(1 / 3))
    fw[1] = 0.0  # ray 1 now smooth; masking it out keeps only ray 0
    assert_close(L.temporal_smoothness(X, fw, X), t(1 / 6))
    assert_close(L.temporal_smoothness(X, fw, X, valid=torch.tensor([True, False])), t(1 / 3))
    # constant velocity costs nothing
    assert L.temporal_smoothness(X, X + 1, X - 1).item() == 0


def test_minimal_flow():
    X = torch.zeros(1, 2, 3, dtype=torch.float64)
    fw = t([[[3.0, 0, 0], [3, 0, 0]]])
    bw = t([[[0.0, -3, 0], [0, -3, 0]]])
    assert_close(L.minimal_flow(X, fw, bw), t(2.0))


def test_spatial_smoothness():
    X = t([[[0.0, 0, 0], [0, 0, 0.5]]], requires_grad=True)
    fw = X.detach() + t([[[0.0, 0, 0], [3, 0, 0]]])
    loss = L.spatial_smoothness(X, fw, X.detach().clone())
    # S_bw = X_bw - X = 0; S_fw jumps by (3, 0, 0): mean_xyz = 1, weight exp(-2 * 0.5)
    assert_close(loss, t(math.exp(-1.0)))
    # a uniform flow along the ray is free
    assert L.spatial_smoothness(X, X + 5, X - 1).item() == 0


def test_entropy_loss():
    one_hot = t([[0.0, 1.0, 0.0, 0.0]])
    assert abs(L.entropy_loss(one_hot).item()) < 1e-7
    assert_close(
        L.entropy_loss(torch.full((3, 4), 0.25, dtype=torch.float64)),
        t(math.log(4)),
        atol=1e-6,
        rtol=0,
    )


def test_distortion_loss_hand_values_and_brute_force():
    z = torch.linspace(0, 1, 11)[None]
    one_bin = torch.zeros(1, 11)
    one_bin[0, 5] = 1.0
    assert_close(L.distortion_loss(one_bin, z), torch.tensor(0.1 / 3))
    two_ends = L.distortion_loss(torch.tensor([[0.5, 0, 0, 0.5]]), torch.tensor([[0.0, 0, 1, 1]]))
    assert_close(two_ends, torch.tensor(0.5))
    g = torch.Generator().manual_seed(0)
    z = torch.sort(torch.rand(7, 9, generator=g), dim=-1).values
    w = torch.rand(7, 9, generator=g)
    edges = torch.cat([z[:, :1], 0.5 * (z[:, 1:] + z[:, :-1]), z[:, -1:]], dim=-1)
    centre, width = 0.5 * (edges[:, 1:] + edges[:, :-1]), edges[:, 1:] - edges[:, :-1]
    pairs = w[:, :, None] * w[:, None, :] * (centre[:, :, None] - centre[:, None, :]).abs()
    expected = (pairs.sum(dim=(1, 2)) + (w.square() * width).sum(dim=1) / 3).mean()
    assert_close(L.distortion_loss(w, z), expected)


def test_distortion_loss_prefers_one_thin_surface():
    """Same total weight: one bin beats two neighbours, which beat two far apart; the gradient
    pulls a split ray together."""
    z = torch.linspace(0, 1, 32)[None]

    def ray(*idx):
        w = torch.zeros(1, 32)
        w[0, list(idx)] = 1.0 / len(idx)
        return w

    one, near, far = (L.distortion_loss(ray(*i), z) for i in ((10,), (10, 11), (5, 25)))
    assert one < near < far
    w = ray(5, 25).requires_grad_()
    L.distortion_loss(w, z).backward()
    # weight added between the two surfaces costs less than weight added outside them
    assert w.grad[0, 6:25].max() < w.grad[0, :5].min()
    assert w.grad[0, 6:25].max() < w.grad[0, 26:].min()


def test_cross_entropy_thickness_loss():
    w_d = t([[0.0, 1.0, 0.0, 0.0]], requires_grad=True)
    w_s = t([[0.5, 0.25, 1.0, 0.125]], requires_grad=True)
    log = lambda v: math.log(v + 1e-8)  # noqa: E731
    loss1 = L.cross_entropy_thickness_loss(w_d, w_s, 1)
    assert_close(loss1, t(log(0.25)))
    # box of 3 around sample 1 covers samples 0, 1, 2
    loss3 = L.cross_entropy_thickness_loss(w_d, w_s, 3)
    assert_close(loss3, t(log(0.5) + log(0.25) + log(1.0)))
    # zero padding: a peak at the last sample with thickness 3 reaches samples 2 and 3 only
    edge = L.cross_entropy_thickness_loss(t([[0.0, 0, 0, 2]]), w_s, 3)
    assert_close(edge, t(2 * (log(1.0) + log(0.125))))
    loss3.backward()
    assert w_d.grad is None  # stop-gradient on the dynamic weights
    assert_close(w_s.grad, t([[1 / (0.5 + 1e-8), 1 / (0.25 + 1e-8), 1 / (1 + 1e-8), 0]]))
    with pytest.raises(ValueError):
        L.cross_entropy_thickness_loss(w_d, w_s, 0)


@pytest.mark.parametrize(
    ("epoch", "geo", "ce"),
    [(0, 0.04, 0.0), (9, 0.04, 0.9 * 2e-4), (10, 0.004, 2e-4), (25, 0.0004, 2e-4)],
)
def test_schedule(epoch, geo, ce):
    w = L.weights_at(epoch)
    assert set(w) == set(L.TERMS)
    assert w["disparity"] == pytest.approx(geo)
    assert w["flow_fw"] == w["flow_bw"] == pytest.approx(geo / 2)
    assert w["cross_entropy"] == pytest.approx(ce)
    assert w["color"] == 1 and w["photometric_fw"] == 1 and w["cycle_bw"] == 1
    assert w["temporal_smoothness"] == w["minimal_flow"] == w["spatial_smoothness"] == 0.1
    assert w["entropy"] == 1e-3


def test_schedule_by_step_and_custom_base():
    assert L.weights_at(step=1000, steps_per_epoch=100) == L.weights_at(10)
    assert L.weights_at(step=999, steps_per_epoch=100)["disparity"] == pytest.approx(0.04)
    base = L.LossWeights(lambda_geo_init=1.0, lambda_geo_decay=0.5, lambda_geo_decay_every=2)
    assert L.weights_at(5, base=base)["disparity"] == 0.25
    with pytest.raises(ValueError):
        L.weights_at()
    with pytest.raises(ValueError):
        L.LossWeights(entropy=-1)


def test_distortion_weight_is_constant_and_off_by_default():
    from nsff_core.config import TrainConfig
    from nsff_core.model.train_views import loss_weights

    assert L.weights_at(0)["distortion"] == 0.0
    base = loss_weights(TrainConfig(lambda_distortion=0.01))
    assert (
        L.weights_at(0, base=base)["distortion"]
        == L.weights_at(33, base=base)["distortion"]
        == 0.01
    )


def test_the_depth_prior_has_its_own_factor_and_the_flow_prior_keeps_lambda_geo():
    from nsff_core.config import TrainConfig
    from nsff_core.model.train_views import loss_weights

    w = L.weights_at(12, base=loss_weights(TrainConfig(lambda_disparity=0.25)))
    assert w["disparity"] == pytest.approx(0.004 * 0.25)
    assert w["flow_fw"] == w["flow_bw"] == pytest.approx(0.002)
    with pytest.raises(ValueError):
        L.LossWeights(disparity=-0.5)


def test_the_minimal_flow_weight_is_configurable_and_defaults_to_nsff_pl():
    from nsff_core.config import TrainConfig
    from nsff_core.model.train_views import loss_weights

    assert L.weights_at(0, base=loss_weights(TrainConfig()))["minimal_flow"] == 0.1
    w = L.weights_at(25, base=loss_weights(TrainConfig(lambda_minimal_flow=0.01)))
    assert w["minimal_flow"] == 0.01
    assert w["temporal_smoothness"] == w["spatial_smoothness"] == 0.1
    with pytest.raises(ValueError):
        loss_weights(TrainConfig(lambda_minimal_flow=-0.1))


def test_total_loss():
    terms = {"color": t(2.0, requires_grad=True), "flow_fw": t(10.0)}
    total = L.total_loss(terms, L.weights_at(0))
    assert_close(total, t(2.0 + 0.02 * 10))
    total.backward()
    assert terms["color"].grad.item() == 1.0
    with pytest.raises(KeyError):
        L.total_loss({"colour": t(1.0)}, L.weights_at(0))


def test_masked_rays_cannot_poison_value_or_gradient():
    nan = float("nan")
    rgb = t([[0.5, 0.5, 0.5], [nan, nan, nan]], requires_grad=True)
    loss = L.photometric_warp_loss(rgb, torch.zeros(2, 3), t([1.0, nan]), torch.tensor([1, 0]))
    x_cyc = t([[[0.3, 0, 0]], [[nan, nan, nan]]], requires_grad=True)
    loss = loss + L.cycle_loss(torch.zeros(2, 1, 3), x_cyc, torch.ones(2, 1), t([1.0, 0.0]) > 0)
    assert_close(loss, t(0.25 + 0.1))
    loss.backward()
    assert torch.isfinite(rgb.grad).all() and torch.isfinite(x_cyc.grad).all()


def test_mask_dynamicness_loss():
    dynamicness = torch.tensor([0.5, 1.0, 0.2, 0.0])
    dynamic = torch.tensor([False, True, True, False])
    # (0.5^2 + 0 + 0.8^2 + 0) / 4
    expected = torch.tensor((0.25 + 0.64) / 4)
    assert torch.isclose(L.mask_dynamicness_loss(dynamicness, dynamic), expected)


def test_disparity_loss_leaves_out_the_rays_not_kept():
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(64, generator=g)
    disp = 2.0 - 3.0 * depth  # depth = a - b disp: the static rays agree exactly
    wrong = disp.clone()
    wrong[:20] = torch.rand(20, generator=g) * 5  # a mover whose prior is nonsense
    keep = torch.ones(64, dtype=torch.bool)
    keep[:20] = False
    assert float(L.disparity_loss(depth, wrong)) > 0.1
    assert float(L.disparity_loss(depth, wrong, keep=keep)) == pytest.approx(0.0, abs=1e-10)
    # too few kept rays: no term, but still a graph node
    few = torch.zeros(64, dtype=torch.bool)
    few[: L.MIN_DISPARITY_RAYS - 1] = True
    d = depth.clone().requires_grad_()
    out = L.disparity_loss(d, wrong, keep=few)
    assert float(out) == 0.0 and out.requires_grad


def test_mover_disparity_averages_the_frames_error_over_the_masked_rays():
    g = torch.Generator().manual_seed(1)
    depth = torch.rand(200, generator=g)
    disp = 2.0 - 3.0 * depth
    dynamic = torch.zeros(200, dtype=torch.bool)
    dynamic[:20] = True
    # right everywhere: 0, whatever the mask
    assert float(L.mover_disparity_loss(depth, disp, dynamic)) == pytest.approx(0.0, abs=1e-10)
    # the mover rendered in front of its prior: the same squared errors as disparity_loss has
    # there, but averaged over the 20 masked rays instead of all 200
    pushed = depth.clone()
    pushed[:20] -= 0.3
    err = (L._normalise_scale_shift(pushed, 1e-8) - L._normalise_scale_shift(-disp, 1e-8)) ** 2
    got = float(L.mover_disparity_loss(pushed, disp, dynamic))
    assert got == pytest.approx(float(err[:20].mean()), rel=1e-5)
    assert got > 5 * float(L.disparity_loss(pushed, disp))
    # a static error alone counts only through the frame's scale and shift
    static_wrong = depth.clone()
    static_wrong[100:110] += 0.5
    assert float(L.mover_disparity_loss(static_wrong, disp, dynamic)) < 0.2 * float(
        L.disparity_loss(static_wrong, disp)
    )
    # the gradient moves the masked rays only, not the frame's scale through its statistics
    d = pushed.clone().requires_grad_()
    L.mover_disparity_loss(d, disp, dynamic).backward()
    assert d.grad[:20].abs().min() > 0 and float(d.grad[20:].abs().max()) == 0.0
    # a separate mover depth (the dynamic field's own) is measured in the composite's frame:
    # the composite right, the mover's own depth off, gives the error of the latter
    own = depth.clone()
    own[:20] -= 0.3
    got_own = float(L.mover_disparity_loss(depth, disp, dynamic, mover_depth=own))
    swapped = float(L.mover_disparity_loss(own, disp, dynamic, mover_depth=depth))
    assert got_own > 0.5 and swapped < 0.1 * got_own  # the latter: the frame's shift only
    # too few masked rays: no term, but a graph node
    d = depth.clone().requires_grad_()
    out = L.mover_disparity_loss(d, disp, torch.arange(200) < L.MIN_DISPARITY_RAYS - 1)
    assert float(out.detach()) == 0.0 and out.requires_grad


def test_the_mover_disparity_term_is_off_by_default_and_does_not_decay():
    from nsff_core.config import TrainConfig
    from nsff_core.model.train_views import loss_weights

    assert L.weights_at(0, base=loss_weights(TrainConfig()))["mover_disparity"] == 0.0
    base = loss_weights(TrainConfig(lambda_mover_disparity=0.05))
    assert [L.weights_at(e, base=base)["mover_disparity"] for e in (0, 15, 45)] == [0.05] * 3
    with pytest.raises(ValueError):
        loss_weights(TrainConfig(lambda_mover_disparity=-1.0))


def test_canonical_loss_weights_the_movers_surface_and_skips_invalid_rays():
    c = torch.zeros(2, 2, 3)
    warped = torch.tensor([[[0.3, 0.0, 0.0], [9.0, 9.0, 9.0]], [[float("nan")] * 3] * 2])
    warped.requires_grad_()
    w = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    loss = L.canonical_loss(c, warped, w, torch.tensor([True, False]))
    assert_close(loss, torch.tensor(0.3))  # the docstring's example; ray 1 has no neighbour
    loss.backward()
    assert torch.isfinite(warped.grad).all() and warped.grad[1].abs().sum() == 0
    # both samples weighted: (0.3 + 27) / 2
    both = L.canonical_loss(c[:1], warped[:1].detach(), torch.ones(1, 2), torch.tensor([True]))
    assert_close(both, torch.tensor(13.65))

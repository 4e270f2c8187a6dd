import numpy as np
import pytest
import torch

from nsff_core.config import SyntheticConfig
from nsff_core.data import (
    FrameSampler,
    exclusion_window,
    make_batch,
    nearest_content_depth,
    scene_data_from_arrays,
)
from nsff_core.rays import ndc_to_world, project_points_depth, projection_matrices


@pytest.mark.parametrize("n", [2, 3, 5, 8, 11, 12, 30])
def test_short_clips_always_have_a_next_frame(n):
    s = FrameSampler(n, (4, 4), batch_size=8, seed=n)
    w = exclusion_window(n)
    prev = s.next_frame()
    for _ in range(200):
        t = s.next_frame()
        assert abs(t - prev) > w
        prev = t
    assert exclusion_window(30) == 5


def test_hard_sampling_follows_weights():
    s = FrameSampler(3, (2, 2), batch_size=1000, seed=0)
    s.weights = torch.tensor([[0.0, 0, 0, 1], [1, 1, 0, 0], [1, 1, 1, 1]])
    px = s.next_pixels(0)
    assert (px == 3).all()
    assert set(s.next_pixels(1).tolist()) == {0, 1}


def test_nearest_content_depth_uses_the_prior_fit():
    rng = np.random.default_rng(0)
    z = rng.uniform(2.0, 10.0, 200)
    a, b = 3.0, 0.5
    prior_pts = a / z + b
    prior_map = np.full((10, 10), a / 1.5 + b)  # 95th percentile content at depth 1.5
    assert nearest_content_depth([z], [prior_pts], [prior_map]) == pytest.approx(1.5)
    # without a usable prior: 5th percentile of the point depths
    assert nearest_content_depth([z]) == pytest.approx(np.percentile(z, 5))
    noisy = rng.normal(size=200)
    assert nearest_content_depth([z], [noisy], [prior_map]) == pytest.approx(np.percentile(z, 5))


def test_batch_rays_hit_the_true_surface():
    from nsff_core.synthetic import render_scene

    scene = render_scene(SyntheticConfig(num_frames=4, width=64, height=36, novel_offsets=()))
    n = scene.num_frames
    ones = np.ones((n - 1, 36, 64), bool)
    data = scene_data_from_arrays(
        scene.images,
        1.0 / scene.depth,
        scene.flow_fw,
        scene.flow_bw,
        ones,
        ones,
        scene.dynamic_mask,
        scene.K,
        scene.c2w,
        content_depth=float(scene.depth.min()),
    )
    assert data.flow_fw_valid[-1].sum() == 0 and data.flow_bw_valid[0].sum() == 0
    t = 2
    pixel = torch.arange(0, 64 * 36, 37)
    batch = make_batch(data, t, pixel)
    assert batch.rgb.shape == (len(pixel), 3) and (batch.t == t).all()
    # the NDC point on the ray at the true depth projects back onto its pixel, at that depth
    y, x = pixel // 64, pixel % 64
    depth = torch.as_tensor(scene.depth[t][y, x], dtype=torch.float32) * data.normalization.scale
    P = projection_matrices(data.K, torch.as_tensor(data.c2w[t], dtype=torch.float32))
    # find the ray parameter whose world point has camera depth `depth` by bisection
    lo, hi = torch.zeros_like(depth), torch.full_like(depth, 0.999)
    for _ in range(40):
        mid = (lo + hi) / 2
        X = ndc_to_world(batch.origins + mid[:, None] * batch.dirs, data.K)
        _, z = project_points_depth(P, X)
        lo, hi = torch.where(z < depth, mid, lo), torch.where(z < depth, hi, mid)
    uv, _ = project_points_depth(P, ndc_to_world(batch.origins + lo[:, None] * batch.dirs, data.K))
    torch.testing.assert_close(uv, batch.xy, atol=2e-2, rtol=0)
    # flow targets: p + flow lands where the static reprojection says (static pixels)
    static = ~batch.dynamic
    P1 = projection_matrices(data.K, torch.as_tensor(data.c2w[t + 1], dtype=torch.float32))
    X = ndc_to_world(batch.origins + lo[:, None] * batch.dirs, data.K)
    uv1, _ = project_points_depth(P1, X)
    torch.testing.assert_close(uv1[static], (batch.xy + batch.flow_fw)[static], atol=5e-2, rtol=0)

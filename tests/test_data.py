import numpy as np
import pytest
import torch

from nsff_core.config import SyntheticConfig
from nsff_core.model.data import (
    FrameSampler,
    exclusion_window,
    make_batch,
    nearest_content_depth,
    scene_data_from_arrays,
)
from nsff_core.model.rays import ndc_to_world, project_points_depth, projection_matrices


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


def test_dynamic_sampling_draws_its_share_from_the_grown_masks():
    masks = torch.zeros(3, 20, 30, dtype=torch.bool)
    masks[0, 10, 15] = True  # a one-pixel mover in frame 0; frame 1 has none
    masks[2, :, :] = True
    s = FrameSampler(3, (20, 30), batch_size=100, seed=0, dynamic=masks, dynamic_share=0.25)
    px = s.next_pixels(0)
    assert px.shape == (100,)
    rows, cols = px[:25] // 30, px[:25] % 30
    # the first quarter lies within the mask grown by 4 px ...
    assert ((rows - 10).abs() <= 4).all() and ((cols - 15).abs() <= 4).all()
    assert len(set(px[:25].tolist())) > 5  # ... spread over the grown square, not one pixel
    # ... the rest is uniform over the frame (most of it far from the mover)
    far = ((px[25:] // 30 - 10).abs() > 4) | ((px[25:] % 30 - 15).abs() > 4)
    assert far.float().mean() > 0.7
    # a frame without mask pixels draws every pixel uniformly
    assert s.next_pixels(1).shape == (100,)
    # off: the same draws as a sampler without masks
    a = FrameSampler(3, (20, 30), batch_size=100, seed=3, dynamic=masks, dynamic_share=0.0)
    b = FrameSampler(3, (20, 30), batch_size=100, seed=3)
    assert torch.equal(a.next_pixels(0), b.next_pixels(0))
    with pytest.raises(Exception, match="dynamic_sampling"):
        FrameSampler(3, (20, 30), batch_size=100, dynamic=masks, dynamic_share=1.0)


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
    from nsff_core.model.synthetic import render_scene

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


# --------------------------------------------------------------------------- corrupt priors


def _scene_dir(root, n=3, hw=(32, 40)):
    """A results/<scene>/ folder with every file load_scene reads before the SfM model."""
    from nsff_core.model import io

    h, w = hw
    for sub in ("frames", "disp", "flow_fw", "flow_bw", "flow_ok", "masks"):
        (root / sub).mkdir(parents=True)
    io.write_cameras(
        root / "cameras.npz", np.tile(np.eye(4), (n, 1, 1)), np.eye(3), hw, np.ones(n),
        2 * np.ones(n), [io.frame_name(i) for i in range(n)],
    )  # fmt: skip
    for i in range(n):
        io.write_image(root / "frames" / io.frame_name(i), np.full((h, w, 3), 9 * i, np.uint8))
        io.write_disparity(root / "disp" / io.frame_name(i, ".npy"), np.ones((h, w)))
        io.write_mask(root / "masks" / io.frame_name(i), np.zeros((h, w), bool))
    for i in range(n - 1):
        io.write_flo(root / "flow_fw" / io.frame_name(i, ".flo"), np.zeros((h, w, 2)))
        io.write_flo(root / "flow_bw" / io.frame_name(i + 1, ".flo"), np.zeros((h, w, 2)))
        io.write_mask(root / "flow_ok" / f"{i:05d}_fw.png", np.ones((h, w), bool))
        io.write_mask(root / "flow_ok" / f"{i + 1:05d}_bw.png", np.ones((h, w), bool))
    return root


def _load_error(root):
    from nsff_core.errors import CorruptFileError
    from nsff_core.workflow.stages.scene import load_scene

    with pytest.raises(CorruptFileError) as info:
        load_scene(root, scene="s")
    return info.value, str(info.value.to_stage_error("s", "train"))


def test_load_scene_names_a_truncated_flow_file_and_the_flow_rule(tmp_path):
    root = _scene_dir(tmp_path / "results" / "s")
    bad = root / "flow_fw" / "00001.flo"
    bad.write_bytes(bad.read_bytes()[:100])
    err, msg = _load_error(root)
    assert err.path == str(bad) and err.made_by == "flow"
    assert "scene 's', rule 'train'" in msg and str(bad) in msg and "truncated" in msg, msg
    assert f"delete the folder {root / 'flow_fw'} and rerun: rule 'flow'" in msg, msg


@pytest.mark.parametrize(
    ("file", "content", "made_by"),
    [
        ("disp/00002.npy", lambda p: np.save(p, np.ones((16, 20), np.float32)), "depth"),
        ("disp/00000.npy", lambda p: p.write_bytes(b"\x93NUMPY garbage"), "depth"),
        ("masks/00001.png", lambda p: p.write_bytes(p.read_bytes()[:30]), "masks"),
        ("flow_ok/00001_bw.png", lambda p: p.write_bytes(b""), "flow"),
        ("frames/00001.png", lambda p: p.write_bytes(p.read_bytes()[:-20]), "frames"),
        ("cameras.npz", lambda p: p.write_bytes(p.read_bytes()[::2]), "sfm"),
    ],
)
def test_load_scene_names_any_corrupt_or_stale_prior(tmp_path, file, content, made_by):
    root = _scene_dir(tmp_path / "results" / "s")
    content(root / file)
    err, msg = _load_error(root)
    assert err.path == str(root / file) and err.made_by == made_by, (err.path, err.made_by)
    assert f"rule '{made_by}' writes it again" in msg, msg


def test_load_scene_refuses_cameras_of_another_size(tmp_path):
    from nsff_core.model import io

    root = _scene_dir(tmp_path / "results" / "s")
    cams = io.read_cameras(root / "cameras.npz")
    io.write_cameras(root / "cameras.npz", cams["c2w"], cams["K"], (64, 80), cams["near"],
                     cams["far"], list(cams["names"]))  # fmt: skip
    err, msg = _load_error(root)
    assert err.made_by == "sfm" and "[64, 80]" in msg and "[32, 40]" in msg, msg


def test_tile_errors_follow_the_drawn_rays_and_weight_the_pixels():
    from nsff_core.model.data import TileErrors

    tiles = TileErrors((6, 10), tile=4, share=0.5, rate=0.5)
    assert tiles.num_tiles == 2 * 3  # ceil(6 / 4) x ceil(10 / 4); edge tiles are partial
    errors = torch.full((2, tiles.num_tiles), -1.0)
    # frame 0: two rays in tile 0 (pixels (0, 0) and (1, 1)), one in tile 5 (pixel (5, 9))
    t = torch.tensor([0, 0, 0])
    pixel = torch.tensor([0, 11, 59])
    tiles.update(errors, t, pixel, torch.tensor([0.02, 0.04, 0.16]))
    assert errors[0, 0] == pytest.approx(0.03) and errors[0, 5] == pytest.approx(0.16)
    assert (errors[0, 1:5] == -1).all() and (errors[1] == -1).all()  # never drawn
    # a second draw moves the tile halfway to the new mean
    tiles.update(errors, torch.tensor([0]), torch.tensor([2]), torch.tensor([0.07]))
    assert errors[0, 0] == pytest.approx(0.05)
    # a diverging step's non-finite errors are left out
    tiles.update(errors, torch.tensor([0, 1]), torch.tensor([2, 0]), torch.tensor([np.nan, np.inf]))
    assert errors[0, 0] == pytest.approx(0.05) and errors[1, 0] == -1

    w = tiles.pixel_weights(errors)
    assert w.shape == (2, 60)
    assert torch.allclose(w.sum(1), torch.ones(2))
    p = w[0].reshape(6, 10)
    # tile 5 (rows 4-5, cols 8-9) has the largest error; the never-drawn tiles count as the
    # worst drawn one, so tile 0 alone is below them
    assert p[5, 9] > p[0, 0] and p[0, 5] == pytest.approx(p[5, 9].item())
    # by hand: tile 0 has 16 pixels at score sqrt(0.05), the other 44 pixels sqrt(0.16)
    total = 16 * 0.05**0.5 + 44 * 0.16**0.5
    assert p[0, 0] == pytest.approx(0.5 / 60 + 0.5 * 0.05**0.5 / total)
    assert p[5, 9] == pytest.approx(0.5 / 60 + 0.5 * 0.16**0.5 / total)
    # the uniform half keeps every pixel drawable; a frame never drawn is uniform
    assert (w > 0.5 / 60 - 1e-9).all()
    assert torch.allclose(w[1], torch.full((60,), 1 / 60))

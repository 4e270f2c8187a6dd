"""The rigidity motion test (nsff_core.priors.nets.rigidity) and the masks backend built on it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from nsff_core.config import MasksConfig
from nsff_core.errors import StageError
from nsff_core.model import io
from nsff_core.model.metrics import iou
from nsff_core.model.synthetic import suite_config
from nsff_core.priors.masks import compute_masks, sfm_masks_config
from nsff_core.priors.nets import rigidity as R
from nsff_core.priors.nets.flow_ops import consistency_mask


def _two_cameras():
    K = np.array([[200.0, 0, 79.5], [0, 200.0, 59.5], [0, 0, 1]])
    c2w = np.stack([np.eye(4)] * 3)
    c2w[0, 0, 3], c2w[2, 0, 3] = -0.1, 0.1  # sideways camera, frame 1 in the middle
    return K, c2w


def _static_flow(K, c2w, i, j, depth):
    h, w = depth.shape
    grid = R.pixel_grid(h, w)
    q, e = R._transfer(K, c2w[i], c2w[j], grid)
    return R._project(q, e, 1.0 / depth) - grid[..., :2]


def test_residuals_are_zero_for_a_static_scene_and_flag_both_kinds_of_mover():
    K, c2w = _two_cameras()
    h, w = 120, 160
    depth = np.full((h, w), 4.0)
    depth[:, 80:] = 2.0  # two planes: parallax differs across the image
    fw = _static_flow(K, c2w, 1, 2, depth)
    bw = _static_flow(K, c2w, 1, 0, depth)
    # off the epipolar line: a patch that also moves down by 3 px towards frame 2
    fw[10:30, 10:30, 1] += 3.0
    # along the epipolar line (x, the camera's translation), at a steady speed: it looks like a
    # static point at a wrong depth (a fifth of the true disparity), in both neighbours
    fw[60:90, 100:130, 0] += 8.0
    bw[60:90, 100:130, 0] -= 8.0
    ok = np.ones((h, w), bool)
    r_flow, r_depth, valid = R.rigidity_residuals(K, c2w, 1, [(2, fw, ok), (0, bw, ok)], 1 / depth)
    assert valid.all()
    static = np.ones((h, w), bool)
    static[10:30, 10:30] = static[60:90, 100:130] = False
    assert np.percentile(r_flow[static], 99) < 0.05 and np.percentile(r_depth[static], 99) < 0.05
    assert np.median(r_flow[10:30, 10:30]) > 1.0  # off the line: the flow cannot be explained
    # on the line the flow is explained, but only by a point far off the depth prior
    assert np.median(r_flow[60:90, 100:130]) < 0.05
    assert np.median(r_depth[60:90, 100:130]) > 2.0


def test_the_prior_is_aligned_before_the_depth_test():
    """A relative depth prior (unknown scale and shift, as a monocular network gives) does not
    make static pixels look like movers."""
    K, c2w = _two_cameras()
    depth = np.tile(np.linspace(2.0, 6.0, 160), (120, 1))
    fw, bw = _static_flow(K, c2w, 1, 2, depth), _static_flow(K, c2w, 1, 0, depth)
    ok = np.ones(depth.shape, bool)
    prior = 7.0 / depth + 0.3
    _, r_depth, _ = R.rigidity_residuals(K, c2w, 1, [(2, fw, ok), (0, bw, ok)], prior)
    assert np.percentile(r_depth, 99) < 0.05


def test_chained_flow_matches_the_two_frame_flow():
    K, c2w = _two_cameras()
    c2w[2, 0, 3] = 0.0
    c2w[1, 0, 3] = -0.05
    depth = np.full((120, 160), 3.0)
    f01 = _static_flow(K, c2w, 0, 1, depth)
    f12 = _static_flow(K, c2w, 1, 2, depth)
    ok = np.ones(depth.shape, bool)
    f02, ok02 = R.chain_flow(f01, ok, f12, ok)
    expected = _static_flow(K, c2w, 0, 2, depth)
    inner = ok02.copy()
    inner[:, :12] = False  # the camera moves right: these pixels leave the image (left)
    assert np.abs(f02 - expected)[inner].max() < 1e-3
    assert not ok02[:, :3].any()


def test_pool_segments_takes_the_median_of_the_trusted_pixels():
    labels = np.repeat(np.arange(4), 25).reshape(10, 10)
    score = np.zeros((10, 10))
    score.flat[:25] = [5.0] * 20 + [0.0] * 5  # segment 0: mostly high
    score.flat[25:50] = [5.0] * 5 + [0.0] * 20  # segment 1: a few high pixels
    valid = np.ones((10, 10), bool)
    valid.flat[75:] = False  # segment 3: no trusted pixel
    score.flat[75:] = 9.0
    pooled = R.pool_segments(score, valid, labels)
    assert np.all(pooled.flat[:25] == 5.0) and np.all(pooled.flat[25:50] == 0.0)
    assert np.all(pooled.flat[75:] == 0.0)


def test_join_by_flow_grows_true_movers_only():
    """A segment that moves with a big mover joins it; one that moves with the static scene, a
    flat one, and the neighbours of a small (possibly false) detection do not."""
    labels = np.zeros((60, 100), int)
    labels[10:50, 10:30] = 1  # the mover's detected part (800 px)
    labels[10:50, 30:50] = 2  # moves with it, ambiguous residual
    labels[10:50, 50:70] = 3  # next to 2, but moves with the background
    labels[52:58, 80:86] = 4  # a small detection (36 px)
    labels[50:60, 70:100] = 5  # next to the small detection, moves like it
    labels[0:10, 10:30] = 6  # flat (no trusted pixel), next to the mover, moves like it
    flow = np.zeros((60, 100, 2))
    for seg, u in ((1, 6.0), (2, 5.0), (4, 4.0), (5, 4.0), (6, 6.0)):
        flow[labels == seg, 0] = u
    raw = np.isin(labels, (1, 4))
    valid = labels != 6
    static = np.isin(labels, (0, 3))  # clear static evidence
    joined = R.join_by_flow(raw, static, valid, labels, [flow, -flow], 3.0, 0.004)
    assert joined[labels == 2].all()
    assert not joined[np.isin(labels, (0, 1, 3, 4, 5, 6))].any()
    # a segment must move clearly differently from the static scene: with a margin larger than
    # its separation from the background (2 px per flow) it stays static
    flow[labels == 3, 0] = 3.0
    assert not R.join_by_flow(raw, static, valid, labels, [flow, -flow], 3.0, 0.004).any()


def _torso_scene(h: int = 120, w: int = 160):
    """Frame 1 of a sideways camera (:func:`_two_cameras`): a background plane at depth 4, a
    mover's "legs" that leave the epipolar lines by 1.5 px (clearly moving) and its "torso"
    above them, whose flow looks like a static point at depth 2.2 (its residual only 0.4 px,
    within the depth prior's factor 2). Returns (rgb, K, c2w, neighbours, prior, torso, legs)."""
    K, c2w = _two_cameras()
    depth = np.full((h, w), 4.0)
    torso = np.zeros((h, w), bool)
    torso[25:65, 60:100] = True
    legs = np.zeros((h, w), bool)
    legs[65:105, 65:95] = True
    depth[torso | legs] = 2.2
    fw, bw = _static_flow(K, c2w, 1, 2, depth), _static_flow(K, c2w, 1, 0, depth)
    fw[torso, 1] += 0.4
    bw[torso, 1] -= 0.4
    fw[legs, 1] += 1.5
    bw[legs, 1] -= 1.5
    rng = np.random.default_rng(0)
    rgb = np.empty((h, w, 3))
    rgb[:] = (120, 140, 110)
    rgb[torso] = (40, 60, 200)
    rgb[legs] = (200, 50, 40)
    rgb += rng.normal(0, 6, rgb.shape)  # texture: every pixel's flow is trusted
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    ok = np.ones((h, w), bool)
    return rgb, K, c2w, [(2, fw, ok), (0, bw, ok)], np.full((h, w), 0.25), torso, legs


def test_the_join_covers_a_torso_that_moves_with_detected_legs():
    """The torso's residual is at the noise level, so the rigidity votes alone miss it; it moves
    with the legs (1.1 px apart) and not with the background (4 px), so the join adds it."""
    rgb, K, c2w, neighbours, prior, torso, legs = _torso_scene()
    off = dataclasses.replace(MasksConfig(), join_flow_px=0.0)
    raw, _ = R.frame_motion_mask(rgb, K, c2w, 1, neighbours, prior, off)
    assert raw[legs].mean() > 0.9 and raw[torso].mean() < 0.1
    raw, _ = R.frame_motion_mask(rgb, K, c2w, 1, neighbours, prior, MasksConfig())
    assert raw[legs].mean() > 0.9 and raw[torso].mean() > 0.9
    assert raw[~(torso | legs)].mean() < 0.01


def _write_scene(tmp_path, preset: str, size=(256, 144), frames=8):
    """A suite scene written as the workflow's priors: frames, exact flows with their
    forward-backward masks, cameras and disparity (ground truth), and its true masks."""
    from nsff_core.model.synthetic import render_scene

    s = render_scene(suite_config(preset, num_frames=frames, novel_offsets=()), size=size)
    d = tmp_path / preset
    for sub in ("frames", "flow_fw", "flow_bw", "flow_ok", "disp"):
        (d / sub).mkdir(parents=True)
    n = len(s.images)
    for i in range(n):
        io.write_image(d / "frames" / io.frame_name(i), s.images[i])
        io.write_disparity(d / "disp" / io.frame_name(i, ".npy"), 1.0 / s.depth[i])
    for i in range(n - 1):
        fw, bw = s.flow_fw[i], s.flow_bw[i]
        io.write_flo(d / "flow_fw" / io.frame_name(i, ".flo"), fw)
        io.write_flo(d / "flow_bw" / io.frame_name(i + 1, ".flo"), bw)
        io.write_mask(d / "flow_ok" / f"{i:05d}_fw.png", consistency_mask(fw, bw, 0.01, 0.5))
        io.write_mask(d / "flow_ok" / f"{i + 1:05d}_bw.png", consistency_mask(bw, fw, 0.01, 0.5))
    h, w = size[1], size[0]
    names = [io.frame_name(i) for i in range(n)]
    io.write_cameras(
        d / "cameras.npz", s.c2w, s.K, (h, w), np.full(n, 0.5), np.full(n, 20.0), names
    )
    return d, s.dynamic_mask


def _masks(d, cfg, out="masks"):
    compute_masks(
        d / "frames",
        d / "flow_fw",
        d / "flow_bw",
        d / "flow_ok",
        d / out,
        cfg,
        scene=d.name,
        cameras=d / "cameras.npz",
        disp_dir=d / "disp",
    )
    return np.stack([io.read_mask(p) for p in io.list_frames(d / out)])


def _score(masks, truth):
    ious = [iou(m, t) for m, t in zip(masks, truth, strict=True)]
    fp = (masks & ~truth).sum() / (~truth).sum()
    return float(np.mean(ious)), float(fp)


@pytest.mark.stage
@pytest.mark.parametrize("preset", ["suite_epipolar", "suite_dolly", "suite_pair"])
def test_rigidity_masks_cover_the_movers_of_suite_scenes(tmp_path, preset):
    """On exact flow and cameras the rigidity masks cover the movers with few false positives,
    including the box that slides along the camera's path, which the epipolar test misses."""
    d, truth = _write_scene(tmp_path, preset)
    rigidity, fp = _score(_masks(d, MasksConfig(backend="rigidity")), truth)
    assert rigidity >= 0.6 and fp <= 0.02, (rigidity, fp)
    if preset == "suite_epipolar":
        epipolar, _ = _score(_masks(d, MasksConfig(backend="epipolar"), "epi"), truth)
        assert epipolar < 0.3 < rigidity - epipolar, (epipolar, rigidity)


def test_rigidity_without_cameras_says_what_to_do(tmp_path):
    d = tmp_path / "s"
    (d / "frames").mkdir(parents=True)
    io.write_image(d / "frames" / "00000.png", np.zeros((16, 16, 3), np.uint8))
    with pytest.raises(StageError, match="rigidity backend needs the SfM cameras"):
        compute_masks(d / "frames", None, None, None, d / "masks", MasksConfig(), scene="s")
    assert not (d / "masks").exists()


def test_sfm_masks_use_a_test_that_needs_no_cameras_and_keep_a_margin():
    cfg = sfm_masks_config(MasksConfig(backend="rigidity", dilate=1))
    assert cfg.backend == "epipolar" and cfg.dilate >= 3
    semantic = sfm_masks_config(MasksConfig(backend="maskrcnn", min_moving_fraction=0.5))
    assert semantic.backend == "maskrcnn" and semantic.min_moving_fraction == 0
    assert semantic.motion_backend == "epipolar"
    assert sfm_masks_config(MasksConfig(backend="none")).backend == "none"
    assert dataclasses.replace(cfg, dilate=1) != cfg

"""Synthetic scene: determinism, shapes, and ground truth that is consistent with itself."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from nsff_core.config import SyntheticConfig
from nsff_core.synthetic import (
    SyntheticScene,
    load_ground_truth,
    render_scene,
    write_scene,
)

TINY = SyntheticConfig(num_frames=4, width=96, height=54, seed=3)


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    cfg = SyntheticConfig(
        num_frames=8, width=160, height=90, novel_offsets=((0.0, -0.15, 0.0), (0.1, 0.0, 0.0))
    )
    return render_scene(cfg)


def _bilinear(img: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Sample img (H, W, C) at continuous pixel coordinates xy (H, W, 2) (integer = centre);
    coordinates are clamped to the image."""
    h, w = img.shape[:2]
    x = np.clip(xy[..., 0], 0, w - 1)
    y = np.clip(xy[..., 1], 0, h - 1)
    x0 = np.minimum(np.floor(x).astype(int), w - 2)
    y0 = np.minimum(np.floor(y).astype(int), h - 2)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    img = img.astype(np.float64)
    top = img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx
    bottom = img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _grid(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    return np.stack([x, y], axis=-1)


def _reproject(depth: np.ndarray, K: np.ndarray, c2w_a: np.ndarray, c2w_b: np.ndarray):
    """Naive static reprojection of every pixel of camera a (z-depth) into camera b: (H, W, 2)."""
    h, w = depth.shape
    p = _grid(h, w)
    rays = np.stack([p[..., 0], p[..., 1], np.ones((h, w))], axis=-1) @ np.linalg.inv(K).T
    world = (rays * depth[..., None]) @ c2w_a[:3, :3].T + c2w_a[:3, 3]
    w2c = np.linalg.inv(c2w_b)
    cam = world @ w2c[:3, :3].T + w2c[:3, 3]
    proj = cam @ K.T
    return proj[..., :2] / proj[..., 2:]


def _visible_fw(scene: SyntheticScene, i: int, tol: float = 0.05) -> np.ndarray:
    """Pixels of frame i whose forward flow lands inside frame i+1 and comes back with the
    backward flow (GT forward-backward consistency): visible in both frames."""
    h, w = scene.hw
    p = _grid(h, w)
    q = p + scene.flow_fw[i]
    inside = (q[..., 0] >= 0) & (q[..., 0] <= w - 1) & (q[..., 1] >= 0) & (q[..., 1] <= h - 1)
    back = _bilinear(scene.flow_bw[i], q)
    return inside & (np.linalg.norm(scene.flow_fw[i] + back, axis=-1) < tol)


def test_deterministic_and_seeded():
    a, b = render_scene(TINY), render_scene(TINY)
    for f in dataclasses.fields(SyntheticScene):
        x, y = getattr(a, f.name), getattr(b, f.name)
        assert np.array_equal(x, y), f.name
    c = render_scene(dataclasses.replace(TINY, seed=4))
    assert not np.array_equal(a.images, c.images)
    assert np.array_equal(a.c2w, c.c2w)  # the camera path does not depend on the seed
    assert not np.allclose(a.object_poses, c.object_poses)  # the object's motion does


def test_shapes_and_dtypes(scene):
    n, h, w, v = 8, 90, 160, 2
    expected = {
        "images": ((n, h, w, 3), np.uint8),
        "K": ((3, 3), np.float64),
        "c2w": ((n, 4, 4), np.float64),
        "depth": ((n, h, w), np.float32),
        "dynamic_mask": ((n, h, w), np.bool_),
        "flow_fw": ((n - 1, h, w, 2), np.float32),
        "flow_bw": ((n - 1, h, w, 2), np.float32),
        "novel_images": ((n, v, h, w, 3), np.uint8),
        "novel_c2w": ((n, v, 4, 4), np.float64),
        "novel_offsets": ((v, 3), np.float64),
        "object_poses": ((n, 1, 4, 4), np.float64),
    }
    for name, (shape, dtype) in expected.items():
        arr = getattr(scene, name)
        assert arr.shape == shape and arr.dtype == dtype, name
    assert scene.hw == (h, w) and scene.num_frames == n and scene.fps == 10.0
    for name in ("depth", "flow_fw", "flow_bw"):
        assert np.isfinite(getattr(scene, name)).all(), name
    assert scene.depth.min() > 1.5 and scene.depth.max() < 12.0
    K = scene.K
    assert K[0, 0] == K[1, 1] and K[0, 2] == (w - 1) / 2 and K[1, 2] == (h - 1) / 2
    R = scene.c2w[:, :3, :3]
    assert np.allclose(R @ R.transpose(0, 2, 1), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(R), 1.0)


def test_other_resolution_same_geometry():
    """The camera is defined by its FOV: depth at a coarser size matches the finer one."""
    fine = render_scene(SyntheticConfig(num_frames=2, width=192, height=108, novel_offsets=()))
    coarse = render_scene(SyntheticConfig(num_frames=2, width=96, height=54, novel_offsets=()))
    assert fine.novel_images.shape == (2, 0, 108, 192, 3)
    # pixel (x, y) of the coarse image covers fine pixels 2x..2x+1: its centre is at 2x + 0.5
    mean_fine = fine.depth.reshape(2, 54, 2, 96, 2).mean(axis=(2, 4))
    assert np.median(np.abs(mean_fine - coarse.depth)) < 0.01


def test_photometric_consistency_of_forward_flow(scene):
    """Sampling frame i+1 at p + flow_fw[i] reproduces frame i where the point stays visible
    (a quarter-pixel flow error roughly doubles the error checked here)."""
    dyn_err = []
    for i in range(scene.num_frames - 1):
        vis = _visible_fw(scene, i)
        assert vis.mean() > 0.8
        img0 = scene.images[i].astype(np.float64)
        warped = _bilinear(scene.images[i + 1], _grid(*scene.hw) + scene.flow_fw[i])
        err = np.abs(warped - img0).mean(axis=-1)
        err_zero = np.abs(scene.images[i + 1].astype(np.float64) - img0).mean(axis=-1)[vis].mean()
        assert err[vis].mean() < 3.0, (i, err[vis].mean())
        assert err[vis].mean() < 0.3 * err_zero, (i, err[vis].mean(), err_zero)
        dyn_err.append(err[vis & scene.dynamic_mask[i]].mean())
    assert np.mean(dyn_err) < 4.0, dyn_err


def test_backward_flow_photometric(scene):
    i = 3
    img1 = scene.images[i + 1].astype(np.float64)
    warped = _bilinear(scene.images[i], _grid(*scene.hw) + scene.flow_bw[i])
    fw_ok = _visible_fw(scene, i)
    # visibility of frame i+1 pixels: consistency of bw then fw
    q = _grid(*scene.hw) + scene.flow_bw[i]
    vis = np.linalg.norm(scene.flow_bw[i] + _bilinear(scene.flow_fw[i], q), axis=-1) < 0.05
    assert fw_ok.mean() > 0.8 and vis.mean() > 0.8
    assert np.abs(warped - img1).mean(axis=-1)[vis].mean() < 3.0


def test_static_flow_is_reprojection_of_depth(scene):
    for i in range(scene.num_frames - 1):
        static = ~scene.dynamic_mask[i]
        pred = _reproject(scene.depth[i], scene.K, scene.c2w[i], scene.c2w[i + 1])
        pred -= _grid(*scene.hw)
        assert np.abs(pred - scene.flow_fw[i])[static].max() < 1e-3
        static1 = ~scene.dynamic_mask[i + 1]
        pred = _reproject(scene.depth[i + 1], scene.K, scene.c2w[i + 1], scene.c2w[i])
        pred -= _grid(*scene.hw)
        assert np.abs(pred - scene.flow_bw[i])[static1].max() < 1e-3
    # the camera moves: static flow is not trivially zero
    assert np.abs(scene.flow_fw).mean() > 0.3


def _sampson(p1: np.ndarray, p2: np.ndarray, F: np.ndarray) -> np.ndarray:
    x1 = np.concatenate([p1, np.ones_like(p1[..., :1])], axis=-1)
    x2 = np.concatenate([p2, np.ones_like(p2[..., :1])], axis=-1)
    Fx1, Ftx2 = x1 @ F.T, x2 @ F
    num = np.einsum("...i,...i->...", x2, Fx1) ** 2
    return np.sqrt(
        num / (Fx1[..., 0] ** 2 + Fx1[..., 1] ** 2 + Ftx2[..., 0] ** 2 + Ftx2[..., 1] ** 2)
    )


def test_dynamic_object_breaks_epipolar_geometry(scene):
    h, w = scene.hw
    cover = scene.dynamic_mask.mean(axis=(1, 2))
    assert (cover > 0.03).all() and (cover < 0.08).all(), cover
    # the object stays fully inside the view: the mask never touches the border
    m = scene.dynamic_mask
    assert not (m[:, 0].any() or m[:, -1].any() or m[:, :, 0].any() or m[:, :, -1].any())
    Kinv = np.linalg.inv(scene.K)
    p = _grid(h, w)
    for i in range(scene.num_frames - 1):
        rel = np.linalg.inv(scene.c2w[i + 1]) @ scene.c2w[i]  # camera i -> camera i+1
        R, t = rel[:3, :3], rel[:3, 3]
        tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
        F = Kinv.T @ tx @ R @ Kinv
        d = _sampson(p, p + scene.flow_fw[i], F)
        assert np.max(d[~m[i]]) < 1e-3
        assert np.median(d[m[i]]) > 1.0  # epipolar motion masks can see the object
        pred = _reproject(scene.depth[i], scene.K, scene.c2w[i], scene.c2w[i + 1]) - p
        res = np.linalg.norm(scene.flow_fw[i] - pred, axis=-1)
        assert np.median(res[m[i]]) > 1.0
        assert 1.0 < np.median(np.linalg.norm(scene.flow_fw[i], axis=-1)[m[i]]) < 12.0


def test_novel_cameras(scene):
    offsets = np.array([[0.0, -0.15, 0.0], [0.1, 0.0, 0.0]])
    assert np.array_equal(scene.novel_offsets, offsets)
    for t in range(scene.num_frames):
        for v, off in enumerate(offsets):
            nov, train = scene.novel_c2w[t, v], scene.c2w[t]
            assert np.allclose(nov[:3, :3], train[:3, :3])
            local = np.linalg.inv(train) @ np.append(nov[:3, 3], 1.0)
            assert np.allclose(local[:3], off, atol=1e-12)
    # the held-out image is rendered from that camera: static pixels reprojected into it match
    t, v = 2, 0
    q = _reproject(scene.depth[t], scene.K, scene.c2w[t], scene.novel_c2w[t, v])
    h, w = scene.hw
    ok = ~scene.dynamic_mask[t] & (q[..., 0] > 1) & (q[..., 0] < w - 2)
    ok &= (q[..., 1] > 1) & (q[..., 1] < h - 2)
    img = scene.images[t].astype(np.float64)
    warped = _bilinear(scene.novel_images[t, v], q)
    err = np.median(np.abs(warped - img).mean(axis=-1)[ok])
    err_same = np.median(np.abs(scene.novel_images[t, v].astype(np.float64) - img).mean(axis=-1))
    assert err < 3.0 and err < 0.3 * err_same, (err, err_same)


def test_write_and_load_round_trip(scene, tmp_path):
    import imageio_ffmpeg

    video, gt = tmp_path / "demo.mp4", tmp_path / "gt" / "demo_gt.npz"
    write_scene(scene, video, gt)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["demo.mp4", "demo_gt.npz", "gt"]
    back = load_ground_truth(gt)
    for f in dataclasses.fields(SyntheticScene):
        x, y = getattr(scene, f.name), getattr(back, f.name)
        assert np.array_equal(x, y), f.name
        assert np.asarray(x).dtype == np.asarray(y).dtype, f.name
    reader = imageio_ffmpeg.read_frames(str(video))
    meta = next(reader)
    assert tuple(meta["size"]) == (160, 90) and meta["fps"] == pytest.approx(10.0)
    frames = [np.frombuffer(f, np.uint8).reshape(90, 160, 3) for f in reader]
    assert len(frames) == scene.num_frames
    decoded = np.stack(frames).astype(np.float64)
    # yuv420p halves the chroma resolution (costly on these colourful textures); luma stays close
    assert np.abs(decoded - scene.images).mean() < 6.0
    luma = np.array([0.299, 0.587, 0.114])
    assert np.abs(decoded @ luma - scene.images @ luma).mean() < 2.0


def test_write_scene_fails_cleanly(tmp_path):
    odd = render_scene(SyntheticConfig(num_frames=2, width=33, height=20, novel_offsets=()))
    with pytest.raises(ValueError, match="even"):
        write_scene(odd, tmp_path / "v.mp4", tmp_path / "gt.npz")
    assert list(tmp_path.iterdir()) == []
